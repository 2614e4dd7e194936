//! The operator runtime, written once and shared by every stage.
//!
//! A stage is a small synchronous [`Stage`]: one input message in, zero or more outputs out.
//! The runtime does everything else, the same way for all of them:
//! - a durable pull consumer per (pipeline, stage, partition), fetched in batches;
//! - every output published with a deterministic `Nats-Msg-Id` derived from the event's
//!   identity, so a replay after a crash is dropped by JetStream's duplicate window;
//! - publish-then-ack: a batch's inputs are acked (AckAll on the batch's last message) only
//!   once every output of the batch has its JetStream ack; failed publishes are retried with
//!   the same ids, never skipped;
//! - rejected inputs go to the pipeline's dead-letter subject with the reason in headers;
//! - metrics per stage.
//!
//! Processing and confirming overlap: while batch N's publish acks are awaited by the
//! confirmer task, batch N+1 is already being processed (acks still happen in order).

mod sink;

pub use sink::{run_sink, Delivery, Sink, SinkOptions};

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Message};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::StageMetrics;
use crate::rejection::Rejection;
use crate::subjects::{dlq_subject, headers};

/// Tunables of the runtime; the defaults suit a small machine.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Most messages processed before their outputs are confirmed and inputs acked.
    pub batch: usize,
    /// Messages requested from the server per pull.
    pub pull_batch: usize,
    /// Batches whose publish acks may be outstanding at once.
    pub batches_in_flight: usize,
    /// Redelivery timeout of unacked inputs.
    pub ack_wait: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            batch: 500,
            pull_batch: 1000,
            batches_in_flight: 4,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl RuntimeOptions {
    /// The server stops delivering past this many unacked messages; keep it above what
    /// can be outstanding (pulled + in-flight batches), or the consumer stalls.
    fn max_ack_pending(&self) -> i64 {
        (self.pull_batch * 2 + self.batch * (self.batches_in_flight + 2)) as i64
    }
}

/// What a stage reads: which stream, through which durable consumer.
#[derive(Debug, Clone)]
pub struct Binding {
    pub pipeline: String,
    pub stage: &'static str,
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
}

/// One input message, as a stage sees it.
pub struct Input<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub headers: Option<&'a HeaderMap>,
    /// Sequence of this message in its stream.
    pub stream_seq: u64,
    /// When the stream stored it, epoch microseconds.
    pub published_us: i64,
}

impl Input<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers?.get(name).map(|v| v.as_str())
    }
}

/// A message a stage wants published.
#[derive(Debug, Clone)]
pub struct Output {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
    pub headers: Option<HeaderMap>,
}

/// Collects a stage's outputs; made once per consumer and reused for every input.
pub struct Emitter {
    outputs: Vec<Output>,
    stage: &'static str,
    /// The durable consumer the inputs come from: dead-letter ids are
    /// `<consumer>:dlq:<input sequence>:<index>`, unique per input even when several sinks
    /// dead-letter the same alert.
    consumer: String,
    dead_letters: Vec<&'static str>,
}

impl Emitter {
    pub fn new(stage: &'static str, consumer: &str) -> Emitter {
        Emitter {
            outputs: Vec::new(),
            stage,
            consumer: consumer.to_string(),
            dead_letters: Vec::new(),
        }
    }

    /// What was emitted so far.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    pub fn emit(&mut self, subject: String, msg_id: String, payload: Vec<u8>) {
        self.outputs.push(Output {
            subject,
            msg_id,
            payload: Bytes::from(payload),
            headers: None,
        });
    }

    /// Dead-letters one part of the input (an NDJSON line, or all of it) with its reason.
    /// `pipeline` is the pipeline the input was meant for (it may not exist).
    pub fn reject(
        &mut self,
        input: &Input<'_>,
        pipeline: &str,
        part: &[u8],
        index: u32,
        line: Option<usize>,
        rejection: &Rejection,
    ) {
        let mut h = HeaderMap::new();
        h.insert(headers::REASON, header_safe(&rejection.reason).as_str());
        h.insert(headers::REASON_KIND, rejection.kind.as_str());
        h.insert(headers::STAGE, self.stage);
        h.insert(headers::SOURCE_SUBJECT, input.subject);
        h.insert(
            headers::SOURCE_SEQUENCE,
            input.stream_seq.to_string().as_str(),
        );
        if let Some(line) = line {
            h.insert(headers::SOURCE_LINE, line.to_string().as_str());
        }
        if let Some(ct) = input.header(headers::CONTENT_TYPE) {
            h.insert(headers::CONTENT_TYPE, ct);
        }
        self.outputs.push(Output {
            subject: dlq_subject(pipeline),
            msg_id: format!("{}:dlq:{}:{index}", self.consumer, input.stream_seq),
            payload: Bytes::copy_from_slice(part),
            headers: Some(h),
        });
        self.dead_letters.push(rejection.kind.as_str());
    }
}

/// Header values cannot hold line breaks; keep reasons on one line and bounded.
fn header_safe(reason: &str) -> String {
    let one_line: String = reason
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(1000) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// One stage of the data plane.
pub trait Stage: Send + 'static {
    /// Turns one input into outputs via `out`. An `Err` dead-letters the whole input.
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection>;
}

/// What every stage task shares.
#[derive(Clone)]
pub struct Runtime {
    pub js: jetstream::Context,
    pub options: RuntimeOptions,
    pub shutdown: CancellationToken,
}

impl Runtime {
    /// Creates (or updates) the durable pull consumer of a binding.
    pub async fn consumer(
        &self,
        binding: &Binding,
        ack_policy: AckPolicy,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
        let stream = self.js.get_stream(&binding.stream).await?;
        let config = pull::Config {
            durable_name: Some(binding.durable.clone()),
            filter_subject: binding.filter_subject.clone(),
            ack_policy,
            ack_wait: self.options.ack_wait,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: self.options.max_ack_pending(),
            max_deliver: -1,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    async fn messages(
        &self,
        binding: &Binding,
        ack_policy: AckPolicy,
    ) -> Result<pull::Stream, async_nats::Error> {
        let consumer = self.consumer(binding, ack_policy).await?;
        Ok(consumer
            .stream()
            .max_messages_per_batch(self.options.pull_batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?)
    }
}

/// A batch whose outputs are being confirmed; its inputs are acked once they all are.
struct Pending {
    outputs: Vec<(Output, PublishAckFuture)>,
    last_input: Message,
}

/// Runs `stage` on `binding` until shutdown. Never returns early on bad input: rejections
/// are dead-lettered, NATS errors are retried.
pub async fn run_stage(
    rt: Runtime,
    binding: Binding,
    mut stage: Box<dyn Stage>,
    metrics: StageMetrics,
) {
    let (confirm_tx, confirm_rx) = mpsc::channel::<Pending>(rt.options.batches_in_flight);
    let confirmer = tokio::spawn(confirm(
        rt.clone(),
        binding.clone(),
        confirm_rx,
        metrics.clone(),
    ));
    'outer: while !rt.shutdown.is_cancelled() {
        let mut messages = match rt.messages(&binding, AckPolicy::All).await {
            Ok(m) => m,
            Err(e) => {
                warn!(stage = binding.stage, durable = %binding.durable, error = %e, "cannot open consumer; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let first = tokio::select! {
                _ = rt.shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
            };
            let mut batch = Vec::with_capacity(rt.options.batch);
            match first {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => {
                    debug!(stage = binding.stage, error = %e, "pull error; reopening consumer");
                    continue 'outer;
                }
                None => continue 'outer,
            }
            // Take whatever else is already here, without waiting: large batches under load,
            // no added latency when idle.
            while batch.len() < rt.options.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            let started = Instant::now();
            let mut outputs = Vec::new();
            let mut out = Emitter::new(binding.stage, &binding.durable);
            for msg in &batch {
                let (stream_seq, published_us) = msg
                    .info()
                    .map(|i| {
                        (
                            i.stream_sequence,
                            (i.published.unix_timestamp_nanos() / 1000) as i64,
                        )
                    })
                    .unwrap_or((0, 0));
                let input = Input {
                    subject: msg.subject.as_str(),
                    payload: &msg.payload,
                    headers: msg.headers.as_ref(),
                    stream_seq,
                    published_us,
                };
                if let Err(rejection) = stage.process(&input, &mut out) {
                    out.outputs.clear();
                    out.dead_letters.clear();
                    out.reject(
                        &input,
                        &binding.pipeline,
                        input.payload,
                        0,
                        None,
                        &rejection,
                    );
                }
                for reason in out.dead_letters.drain(..) {
                    metrics.dead_letter(&binding.pipeline, reason);
                }
                outputs.append(&mut out.outputs);
            }
            metrics.events_in.inc_by(batch.len() as u64);
            metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            let mut confirming = Vec::with_capacity(outputs.len());
            for output in outputs {
                let ack = publish_until_sent(&rt, &output, &metrics).await;
                match ack {
                    Some(ack) => confirming.push((output, ack)),
                    None => break 'outer, // shutting down; unacked inputs are redelivered
                }
            }
            let Some(last_input) = batch.pop() else {
                continue;
            };
            if confirm_tx
                .send(Pending {
                    outputs: confirming,
                    last_input,
                })
                .await
                .is_err()
            {
                break 'outer;
            }
        }
    }
    drop(confirm_tx);
    let _ = confirmer.await;
}

fn publish_message(output: &Output) -> PublishMessage {
    let mut m = PublishMessage::build().payload(output.payload.clone());
    if let Some(h) = &output.headers {
        m = m.headers(h.clone());
    }
    // After `headers`, which would replace it.
    m.message_id(&output.msg_id)
}

/// Hands a message to the client, retrying until it is accepted or we shut down.
async fn publish_until_sent(
    rt: &Runtime,
    output: &Output,
    metrics: &StageMetrics,
) -> Option<PublishAckFuture> {
    let mut delay = Duration::from_millis(50);
    loop {
        match rt
            .js
            .send_publish(output.subject.clone(), publish_message(output))
            .await
        {
            Ok(ack) => return Some(ack),
            Err(e) => {
                metrics.publish_retries.inc();
                warn!(subject = %output.subject, error = %e, "publish failed; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes `output` (same id, so never twice in the stream) until JetStream confirms it.
/// Returns false if shutdown came first.
async fn republish_until_confirmed(rt: &Runtime, output: &Output, metrics: &StageMetrics) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        metrics.publish_retries.inc();
        tokio::select! {
            _ = rt.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        let Some(ack) = publish_until_sent(rt, output, metrics).await else {
            return false;
        };
        match ack.await {
            Ok(_) => return true,
            Err(e) => {
                warn!(subject = %output.subject, error = %e, "publish not acknowledged; retrying")
            }
        }
    }
}

/// Awaits each batch's publish acks in order, republishing (same ids) what failed, then acks
/// the batch's inputs. Inputs are never acked past an unconfirmed output.
async fn confirm(
    rt: Runtime,
    binding: Binding,
    mut rx: mpsc::Receiver<Pending>,
    metrics: StageMetrics,
) {
    while let Some(pending) = rx.recv().await {
        let count = pending.outputs.len() as u64;
        for (output, ack) in pending.outputs {
            if let Err(e) = ack.await {
                warn!(stage = binding.stage, subject = %output.subject, error = %e, "publish not acknowledged; republishing");
                if !republish_until_confirmed(&rt, &output, &metrics).await {
                    // Shutting down: the inputs stay unacked, are redelivered and their outputs
                    // republished (and deduplicated) by the next run.
                    return;
                }
            }
        }
        metrics.events_out.inc_by(count);
        if let Err(e) = pending.last_input.ack().await {
            // A lost ack only means a redelivery, which the output ids make harmless.
            debug!(stage = binding.stage, error = %e, "ack failed");
        }
    }
}
