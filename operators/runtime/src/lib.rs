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

pub mod checkpoint;
pub mod fence;
pub mod metrics;
pub mod natsd;
pub mod replay;
pub mod snapshot;
pub mod streams;
pub mod timebase;

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Message};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint::{StateDelta, StateStore};
use crate::fence::Fence;
use crate::metrics::StageMetrics;
use crate::snapshot::Snapshots;
use anom_pipeline::rejection::Rejection;
use anom_pipeline::subjects::{dlq_subject, headers};

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
        // Keyed stages hold acks until a checkpoint: leave room for a checkpoint's worth.
        (self.pull_batch * 2 + self.batch * (self.batches_in_flight + 2)).max(KEYED_UNACKED_MAX * 2)
            as i64
    }
}

/// A keyed stage checkpoints at the latest when this many inputs wait for their ack.
const KEYED_UNACKED_MAX: usize = 10_000;

/// What a stage reads: which stream, through which durable consumer.
#[derive(Debug, Clone)]
pub struct Binding {
    pub pipeline: String,
    pub stage: &'static str,
    pub stream: String,
    /// The consumer's base name; also names the unit's state tree and its dead-letter ids.
    pub durable: String,
    pub filter_subject: String,
    /// Whether this process still owns the unit (always, without a coordinator).
    pub fence: Fence,
    /// Consumers (base names) that read the same subject before this unit existed: a keyed
    /// unit with no state yet starts after what they acked, instead of at the stream's
    /// start (a pipeline switched to fused units takes over from its first stage's unit).
    pub predecessors: Vec<String>,
    /// An output stream this unit is the only writer of, whose order must survive a NATS
    /// failover (validate's valid stream): see [`Ordered`].
    pub ordered: Option<Ordered>,
}

/// Outputs to one stream that must be stored in the order they were sent, even when a
/// server fails over mid-batch (a lost publish retried after later ones were stored would
/// otherwise land behind them, and a key's events would reach its fused unit out of order).
///
/// Each such output expects the previous one to be the stream's last message
/// (`Nats-Expected-Last-Msg-Id`): if one is lost, every later one is refused too, and the
/// confirmer's republish, in order, stores them in order. JetStream checks duplicate ids
/// before expectations, so a republished output already stored is still just a duplicate.
/// Another writer may add a message now and then (the alert commands users send into a fused
/// unit's input): the output refused behind it is sent again after it (`republish_all`).
/// Only one writer of a *stream of events* is sound: the unit (another owner is fenced off).
#[derive(Debug, Clone)]
pub struct Ordered {
    pub stream: String,
    /// Outputs whose subject starts with this go to the stream.
    pub subject_prefix: String,
}

/// After this many refused republishes of one output, it is sent without its expectation:
/// something else wrote to the stream (an earlier owner not yet fenced off), and order is
/// then no longer ours to keep — better stored late than never.
const ORDERED_ATTEMPTS: u32 = 20;

impl Binding {
    /// The consumer's name on the server: the base name, with the owner's epoch when fenced,
    /// so that a stale owner's acks can never land on its successor's consumer.
    pub fn consumer_name(&self) -> String {
        match self.fence.epoch() {
            None => self.durable.clone(),
            Some(epoch) => format!("{}-e{epoch}", self.durable),
        }
    }

    /// Whether `name` is this unit's consumer under any owner.
    fn is_incarnation(&self, name: &str) -> bool {
        is_incarnation_of(&self.durable, name)
    }
}

/// Whether consumer `name` is `durable` under some owner (`<durable>` or `<durable>-e<epoch>`).
fn is_incarnation_of(durable: &str, name: &str) -> bool {
    name == durable
        || name
            .strip_prefix(durable)
            .and_then(|rest| rest.strip_prefix("-e"))
            .is_some_and(|epoch| !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()))
}

impl Binding {
    /// The most any predecessor's consumer acked (0: none).
    async fn predecessors_floor(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> Result<u64, async_nats::Error> {
        if self.predecessors.is_empty() {
            return Ok(0);
        }
        let mut floor = 0;
        let mut listed = stream.consumer_names();
        while let Some(name) = listed.next().await {
            let name = name?;
            if self
                .predecessors
                .iter()
                .any(|p| is_incarnation_of(p, &name))
            {
                if let Ok(info) = stream.consumer_info(&name).await {
                    floor = floor.max(info.ack_floor.stream_sequence);
                }
            }
        }
        Ok(floor)
    }
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

    /// What a batch stage keeps of an input to dead-letter it after `process` returned.
    pub fn hold(&self) -> Held {
        Held {
            subject: self.subject.to_string(),
            stream_seq: self.stream_seq,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// An input kept past `process` (see [`Stage::end_batch`]).
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub subject: String,
    pub stream_seq: u64,
    pub payload: Bytes,
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

    /// Forgets what was emitted (for tools and benchmarks that run a stage by hand).
    pub fn clear(&mut self) {
        self.outputs.clear();
        self.dead_letters.clear();
    }

    /// Hands over what was emitted so far (for running stages in-process: backtests).
    pub fn take(&mut self) -> Vec<Output> {
        self.dead_letters.clear();
        std::mem::take(&mut self.outputs)
    }

    /// Hands over what was emitted so far and the reasons of what it dead-lettered (for
    /// stages that run others in-process: a fused unit passes both on, see [`Emitter::pass`]).
    pub fn take_with_dead_letters(&mut self) -> (Vec<Output>, Vec<&'static str>) {
        (
            std::mem::take(&mut self.outputs),
            std::mem::take(&mut self.dead_letters),
        )
    }

    /// Emits an output another emitter made, as it is.
    pub fn pass(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Counts dead letters another emitter made (their outputs are passed on apart).
    pub fn count_dead_letters(&mut self, reasons: impl IntoIterator<Item = &'static str>) {
        self.dead_letters.extend(reasons);
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

    /// Publishes to a side subject (late data) with headers.
    pub fn emit_with_headers(
        &mut self,
        subject: String,
        msg_id: String,
        payload: Bytes,
        headers: HeaderMap,
    ) {
        self.outputs.push(Output {
            subject,
            msg_id,
            payload,
            headers: Some(headers),
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

impl Emitter {
    /// Dead-letters an input held since `process` (see [`Stage::end_batch`]).
    pub fn reject_held(&mut self, held: &Held, pipeline: &str, rejection: &Rejection) {
        let input = Input {
            subject: &held.subject,
            payload: &held.payload,
            headers: None,
            stream_seq: held.stream_seq,
            published_us: 0,
        };
        self.reject(&input, pipeline, &held.payload, 0, None, rejection);
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

/// One stage of the data plane. Only `process` is required; keyed stages add timers and
/// checkpoints.
pub trait Stage: Send + 'static {
    /// Turns one input into outputs via `out`. An `Err` dead-letters the whole input.
    fn process(&mut self, input: &Input<'_>, out: &mut Emitter) -> Result<(), Rejection>;

    /// Called about once a second when no input is waiting, with the wall clock (epoch ms):
    /// timers emit here.
    fn tick(&mut self, _now_ms: i64, _out: &mut Emitter) {}

    /// Called after `process` has seen every input of a batch, before anything is published:
    /// a stage that works on whole batches (model inference) emits here. Inputs it cannot
    /// finish are dead-lettered with [`Emitter::reject_held`].
    fn end_batch(&mut self, _out: &mut Emitter) {}

    /// The state changed since the previous call, to be committed with the source sequence of
    /// the last processed input. `None` for stateless stages.
    fn checkpoint(&mut self) -> Option<StateDelta> {
        None
    }

    /// Whether to checkpoint before the interval is up (e.g. many keys changed).
    fn checkpoint_due(&self) -> bool {
        false
    }
}

/// What every stage task shares.
#[derive(Clone)]
pub struct Runtime {
    pub js: jetstream::Context,
    pub options: RuntimeOptions,
    pub shutdown: CancellationToken,
}

impl Runtime {
    /// (Re)creates the durable pull consumer of a binding so that it delivers from just after
    /// `resume_after` (keyed stages: the sequence their state reflects) or, for stateless
    /// stages, `max(ack floor, resume_after)`.
    ///
    /// Recreating matters after a crash: messages delivered to the dead process but never
    /// processed would otherwise only come back after the ack wait, and with AckAll the new
    /// process's first ack would cover them, losing them. Starting over from the ack floor
    /// redelivers them at once; outputs republished twice are dropped by their ids. The
    /// consumers of earlier owners of the unit (other epochs) are taken over the same way.
    pub async fn consumer(
        &self,
        binding: &Binding,
        ack_policy: AckPolicy,
        resume_after: u64,
        keyed: bool,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
        let stream = self.js.get_stream(&binding.stream).await?;
        let mut names = vec![binding.consumer_name()];
        if binding.fence.epoch().is_some() {
            let mut listed = stream.consumer_names();
            while let Some(name) = listed.next().await {
                let name = name?;
                if binding.is_incarnation(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut floor: Option<u64> = None;
        for name in &names {
            if let Ok(info) = stream.consumer_info(name).await {
                // We only create consumers starting just after a floor: everything before
                // their start is done even when nothing was acked through them yet.
                let started_after = match info.config.deliver_policy {
                    DeliverPolicy::ByStartSequence { start_sequence } => start_sequence - 1,
                    _ => 0,
                };
                let acked = info.ack_floor.stream_sequence.max(started_after);
                floor = Some(floor.unwrap_or(0).max(acked));
                stream.delete_consumer(name).await?;
            }
        }
        // A keyed stage's state may come from a snapshot older than the ack floor: it must see
        // every input after its state, the floor notwithstanding.
        let start = if keyed {
            if resume_after == 0 {
                binding.predecessors_floor(&stream).await?
            } else {
                resume_after
            }
        } else {
            floor.unwrap_or(0).max(resume_after)
        } + 1;
        let config = pull::Config {
            durable_name: Some(binding.consumer_name()),
            filter_subject: binding.filter_subject.clone(),
            ack_policy,
            ack_wait: self.options.ack_wait,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            max_ack_pending: self.options.max_ack_pending(),
            max_deliver: -1,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    /// Takes a unit over from its earlier owners before its state is read: their consumers
    /// are replaced by this owner's, starting after what they acked. A stage whose state is
    /// read from shared storage (the alert stage) must read it only after this: an earlier
    /// owner that has not yet noticed it lost the unit may still write and ack a batch, and
    /// state read before that ack would miss inputs that are never delivered again.
    pub async fn take_over(&self, binding: &Binding) -> Result<(), async_nats::Error> {
        self.consumer(binding, AckPolicy::All, 0, false)
            .await
            .map(|_| ())
    }

    async fn messages(
        &self,
        binding: &Binding,
        ack_policy: AckPolicy,
        resume_after: u64,
        keyed: bool,
    ) -> Result<(jetstream::consumer::Consumer<pull::Config>, pull::Stream), async_nats::Error>
    {
        let consumer = self
            .consumer(binding, ack_policy, resume_after, keyed)
            .await?;
        let messages = self.pull(&consumer).await?;
        Ok((consumer, messages))
    }

    /// Pulls from an existing consumer: no stream or consumer administration, so it works
    /// while the cluster elects a new meta leader.
    async fn pull(
        &self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
    ) -> Result<pull::Stream, async_nats::Error> {
        Ok(consumer
            .stream()
            .max_messages_per_batch(self.options.pull_batch)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(30))
            .messages()
            .await?)
    }
}

/// Where a keyed stage's state is made durable, and how often.
pub struct StateBinding {
    pub store: StateStore,
    pub interval: Duration,
    /// The source sequence the restored state already reflects: inputs up to it are skipped.
    pub restored_seq: u64,
    /// Where the state is also snapshotted for other workers, when a coordinator runs.
    pub snapshots: Option<SnapshotPolicy>,
}

/// Snapshots of a unit's state to the shared object store (see [`crate::snapshot`]).
#[derive(Clone)]
pub struct SnapshotPolicy {
    pub snapshots: Snapshots,
    /// The object's name: the unit's state tree.
    pub name: String,
    pub every: Duration,
}

/// Work handed to the confirmer, which handles it in order: confirm `outputs`, then commit
/// `commit` (state as of a source sequence), then ack `ack` (AckAll: it and everything
/// before it).
struct Pending {
    outputs: Vec<(Sent, PublishAckFuture)>,
    commit: Option<(StateDelta, u64)>,
    ack: Option<Message>,
    /// Told once everything before it is confirmed (a barrier).
    done: Option<tokio::sync::oneshot::Sender<()>>,
    /// Subjects about to be written for the first time, with their stream and its last
    /// sequence: made durable in the output marks before the confirmer signals `done`.
    births: Vec<(String, u64, String)>,
}

/// Waits until the confirmer has confirmed and acked everything sent to it so far (and made
/// `births` durable). False if it stopped first.
async fn drained(confirm_tx: &mpsc::Sender<Pending>, births: Vec<(String, u64, String)>) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let barrier = Pending {
        outputs: Vec::new(),
        commit: None,
        ack: None,
        done: Some(tx),
        births,
    };
    confirm_tx.send(barrier).await.is_ok() && rx.await.is_ok()
}

/// Where a delivered message sits, read once from its reply subject.
#[derive(Clone, Copy, Default)]
struct Position {
    stream_seq: u64,
    /// The consumer's delivery sequence: consecutive unless deliveries were lost.
    delivered: u64,
    published_us: i64,
    /// Messages still waiting for the consumer after this one.
    pending: u64,
}

fn position(msg: &Message) -> Position {
    msg.info()
        .map(|i| Position {
            stream_seq: i.stream_sequence,
            delivered: i.consumer_sequence,
            published_us: (i.published.unix_timestamp_nanos() / 1000) as i64,
            pending: i.pending,
        })
        .unwrap_or_default()
}

/// Runs `stage` on `binding` until shutdown. Never returns early on bad input: rejections
/// are dead-lettered, NATS errors are retried.
///
/// Keyed stages (`state` given) ack their inputs only once the state that includes them is
/// committed, so after a crash the restored state and the redelivered inputs fit exactly.
/// A stateless stage given a `log` (a tree of its own) keeps its output marks there, so that
/// its replays too are published once past the duplicate window (see [`replay`]).
pub async fn run_stage(
    rt: Runtime,
    binding: Binding,
    mut stage: Box<dyn Stage>,
    metrics: StageMetrics,
    state: Option<StateBinding>,
    log: Option<StateStore>,
) {
    let store = state.as_ref().map(|s| s.store.clone());
    let snapshots = state.as_ref().and_then(|s| s.snapshots.clone());
    // What this unit published after its last checkpoint (or logged ack), before it stopped:
    // read back once, so the replay publishes none of it again.
    let marks_store = store.clone().or_else(|| log.clone());
    let marks = match marks_store.as_ref().map(|s| s.marks()) {
        Some(Ok(Some(m))) => m,
        Some(Err(e)) => {
            warn!(stage = binding.stage, durable = %binding.durable, error = %e, "cannot read the output marks; replays rely on the duplicate window");
            replay::Marks::default()
        }
        _ => replay::Marks::default(),
    };
    // Subjects whose outputs the stored marks cover, and those born since.
    let stored_marks = marks.clone();
    let mut covered: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut published = if marks.is_empty() {
        replay::Published::default()
    } else {
        match replay::Published::scan(&rt.js, &marks).await {
            Ok(p) => {
                if !p.is_empty() {
                    info!(stage = binding.stage, durable = %binding.durable, outputs = p.len(), "outputs published before the restart found; their replays are not published again");
                }
                p
            }
            Err(e) => {
                warn!(stage = binding.stage, durable = %binding.durable, error = %e, "cannot read back what the unit published; replays rely on the duplicate window");
                replay::Published::default()
            }
        }
    };
    // Keyed stages may wait on a checkpoint in the confirmer: leave room to keep processing
    // meanwhile (the consumer's max_ack_pending still bounds what is outstanding).
    let in_flight = if state.is_some() {
        rt.options.batches_in_flight * 8
    } else {
        rt.options.batches_in_flight
    };
    let (confirm_tx, confirm_rx) = mpsc::channel::<Pending>(in_flight);
    // Where the unit's ordered outputs continue: after the stream's last message.
    let mut chain: Option<String> = match &binding.ordered {
        Some(o) => match last_message_id(&rt, &o.stream).await {
            Ok(last) => last,
            Err(e) => {
                warn!(stage = binding.stage, stream = %o.stream, error = %e, "cannot read the stream's last message; the first output is sent without an expected predecessor");
                None
            }
        },
        None => None,
    };
    let confirmer = tokio::spawn(confirm(
        rt.clone(),
        binding.clone(),
        confirm_rx,
        metrics.clone(),
        Durable { store, log, marks },
        snapshots,
    ));
    let restored_seq = state.as_ref().map_or(0, |s| s.restored_seq);
    let interval = state.as_ref().map(|s| s.interval);
    let mut last_checkpoint = Instant::now();
    let mut last_seq = restored_seq;
    // Keyed stages: the newest input not yet covered by a committed checkpoint.
    let mut unacked: Option<Message> = None;
    let mut since_checkpoint = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Emitter::new(binding.stage, &binding.durable);
    let lag = metrics.pending(&binding.durable);
    // Whether the unit was lost to another owner, or a batch's outputs were left unsent:
    // then nothing more may be committed.
    let mut fenced = false;
    let mut opened = false;
    'outer: while !rt.shutdown.is_cancelled() {
        if !binding.fence.holds() {
            fenced = true;
            break;
        }
        // Reopening starts the consumer after the last processed input, which implicitly
        // acks everything before it: first let every earlier output be confirmed.
        if opened && !drained(&confirm_tx, Vec::new()).await {
            fenced = true;
            break;
        }
        if opened {
            // An ack through the old consumer's reply subject would reach the new consumer
            // of the same name with an old delivery sequence, and the server would ignore
            // every later ack until deliveries caught up with it. The new consumer starts
            // after `last_seq` anyway; the state is committed at the next checkpoint.
            unacked = None;
        }
        opened = true;
        // Resuming after what this process already processed: those inputs are in its state
        // and in the confirmer's hands.
        let (consumer, mut messages) = match rt
            .messages(&binding, AckPolicy::All, last_seq, state.is_some())
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(stage = binding.stage, durable = %binding.durable, error = %e, "cannot open consumer; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // The delivery sequence the next message must have; a jump means deliveries were lost
        // on the way (a server failed over mid-delivery).
        let mut next_delivery: Option<u64> = None;
        loop {
            let mut batch = Vec::with_capacity(rt.options.batch);
            tokio::select! {
                _ = rt.shutdown.cancelled() => break 'outer,
                _ = ticker.tick() => {}
                m = messages.next() => match m {
                    Some(Ok(m)) => batch.push(m),
                    // The consumer's server went away (a NATS node failed): pull again from
                    // the same durable consumer, whose new leader carries on; deliveries lost
                    // on the way show as a gap below. If that fails too, reopen.
                    Some(Err(e)) if matches!(
                        e.kind(),
                        MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::NoResponders
                    ) => {
                        warn!(stage = binding.stage, durable = %binding.durable, error = %e, "consumer unreachable; pulling again");
                        tokio::select! {
                            _ = rt.shutdown.cancelled() => break 'outer,
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                        match rt.pull(&consumer).await {
                            Ok(m) => {
                                messages = m;
                                continue;
                            }
                            Err(_) => continue 'outer,
                        }
                    }
                    Some(Err(e)) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
                        continue 'outer;
                    }
                    // Transient (a timed-out pull): the stream goes on.
                    Some(Err(e)) => {
                        debug!(stage = binding.stage, error = %e, "pull error");
                        continue;
                    }
                    None => continue 'outer,
                },
            }
            // Take whatever else is already here, without waiting: large batches under load,
            // no added latency when idle.
            while !batch.is_empty() && batch.len() < rt.options.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            // With AckAll, acking past a lost delivery would ack it unprocessed: stop before
            // the gap and reopen the consumer after the last input processed.
            let mut positions: Vec<Position> = batch.iter().map(position).collect();
            let mut expected = 0;
            let gap = positions.iter().position(|p| {
                let lost = next_delivery.is_some_and(|n| p.delivered != n);
                expected = next_delivery.unwrap_or(0);
                next_delivery = Some(p.delivered + 1);
                lost
            });
            if let Some(at) = gap {
                let (got, seq) = (positions[at].delivered, positions[at].stream_seq);
                warn!(stage = binding.stage, durable = %binding.durable, expected, got, seq, last_seq, "deliveries were lost in transit; reopening the consumer after the last processed input");
                batch.truncate(at);
                positions.truncate(at);
            }
            let started = Instant::now();
            let mut outputs = Vec::new();
            for (msg, at) in batch.iter().zip(&positions) {
                let (stream_seq, published_us) = (at.stream_seq, at.published_us);
                if stream_seq <= last_seq && stream_seq != 0 {
                    // Already processed (restored state, or a redelivery of an input still
                    // being confirmed): its effects and outputs exist.
                    continue;
                }
                last_seq = last_seq.max(stream_seq);
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
            if batch.is_empty() {
                stage.tick(timebase::wall_ms(), &mut out);
                outputs.append(&mut out.outputs);
            } else {
                stage.end_batch(&mut out);
                for reason in out.dead_letters.drain(..) {
                    metrics.dead_letter(&binding.pipeline, reason);
                }
                outputs.append(&mut out.outputs);
                if let Some(last) = positions.last() {
                    lag.set(last.pending as i64);
                }
                metrics.events_in.inc_by(batch.len() as u64);
                metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            if !binding.fence.holds() {
                // Another worker owns the unit now; it redoes this batch from its own state.
                warn!(
                    stage = binding.stage,
                    unit = binding.fence.unit(),
                    "unit taken over by another worker; stopping"
                );
                fenced = true;
                break 'outer;
            }
            // A subject written for the first time is marked durably before anything is sent
            // to it (see `replay`): rare, once per subject per unit.
            let mut births = Vec::new();
            for output in &outputs {
                let s = output.subject.as_str();
                if marks_store.is_some()
                    && !s.starts_with("$KV.")
                    && !stored_marks.covers(s)
                    && !covered.contains(s)
                    && !births
                        .iter()
                        .any(|(_, _, b): &(String, u64, String)| b == s)
                {
                    match birth_of(&rt, s).await {
                        Ok((stream, last)) => births.push((stream, last, s.to_string())),
                        Err(e) => {
                            debug!(stage = binding.stage, subject = s, error = %e, "cannot find the subject's stream; its replays rely on the duplicate window")
                        }
                    }
                    covered.insert(s.to_string());
                }
            }
            if !births.is_empty() && !drained(&confirm_tx, births).await {
                fenced = true;
                break 'outer;
            }
            let mut pending = Pending {
                outputs: Vec::with_capacity(outputs.len()),
                commit: None,
                ack: None,
                done: None,
                births: Vec::new(),
            };
            for output in outputs {
                if published.take(&output.msg_id) {
                    metrics.replays_suppressed.inc();
                    continue;
                }
                let expects = match &binding.ordered {
                    Some(o) if output.subject.starts_with(&o.subject_prefix) => {
                        let previous = chain.replace(output.msg_id.clone());
                        Some(previous)
                    }
                    _ => None,
                };
                let sent = Sent {
                    output,
                    chained: expects.is_some(),
                    expects: expects.flatten(),
                    refused: false,
                };
                match publish_until_sent(&rt, &sent, &metrics).await {
                    Some(ack) => pending.outputs.push((sent, ack)),
                    None => {
                        // Shutting down with outputs of this batch unsent: the state now
                        // covers inputs whose outputs do not exist, so it must not be
                        // committed; the inputs stay unacked and are redone from the last
                        // checkpoint.
                        fenced = true;
                        break 'outer;
                    }
                }
            }
            match interval {
                None => pending.ack = batch.pop(),
                Some(every) => {
                    since_checkpoint += batch.len();
                    if let Some(last) = batch.pop() {
                        unacked = Some(last);
                    }
                    if last_checkpoint.elapsed() >= every
                        || since_checkpoint >= KEYED_UNACKED_MAX
                        || stage.checkpoint_due()
                    {
                        since_checkpoint = 0;
                        if let Some(delta) = stage.checkpoint() {
                            pending.commit = Some((delta, last_seq));
                            pending.ack = unacked.take();
                        }
                        last_checkpoint = Instant::now();
                    }
                }
            }
            let idle =
                pending.outputs.is_empty() && pending.commit.is_none() && pending.ack.is_none();
            if !idle && confirm_tx.send(pending).await.is_err() {
                fenced = true;
                break 'outer;
            }
            if gap.is_some() {
                continue 'outer;
            }
        }
    }
    // A clean stop commits what was processed, so a restart replays nothing.
    if interval.is_some() && !fenced {
        if let Some(delta) = stage.checkpoint() {
            let _ = confirm_tx
                .send(Pending {
                    outputs: Vec::new(),
                    commit: Some((delta, last_seq)),
                    ack: unacked.take(),
                    done: None,
                    births: Vec::new(),
                })
                .await;
        }
    }
    drop(confirm_tx);
    let _ = confirmer.await;
}

/// An output as sent: with the id of the output it must follow in an [`Ordered`] stream.
struct Sent {
    output: Output,
    expects: Option<String>,
    /// Its last send was refused for not following `expects` (not lost, not timed out).
    refused: bool,
    /// Bound for an [`Ordered`] stream (even once sent without `expects`).
    chained: bool,
}

impl Sent {
    /// Notes why a send failed.
    fn failed(mut self, e: &async_nats::jetstream::context::PublishError) -> Sent {
        self.refused =
            e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastMessageId;
        self
    }
}

fn publish_message(sent: &Sent) -> PublishMessage {
    let output = &sent.output;
    let mut m = PublishMessage::build().payload(output.payload.clone());
    if let Some(h) = &output.headers {
        m = m.headers(h.clone());
    }
    if let Some(last) = &sent.expects {
        m = m.expected_last_message_id(last);
    }
    // After `headers`, which would replace it.
    m.message_id(&output.msg_id)
}

/// Every ack of `sent`, in order, awaited together: each ack's timeout starts when it is
/// awaited, so awaiting one after another would make a batch lost in a failover cost a
/// timeout per message instead of one.
async fn acks_of(
    sent: Vec<(Sent, PublishAckFuture)>,
) -> Vec<(
    Sent,
    Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >,
)> {
    futures::future::join_all(
        sent.into_iter()
            .map(|(output, ack)| async move { (output, ack.await) }),
    )
    .await
}

/// The stream that stores `subject`, and its last sequence now.
async fn birth_of(rt: &Runtime, subject: &str) -> Result<(String, u64), async_nats::Error> {
    let name = rt.js.stream_by_subject(subject).await?;
    let mut stream = rt.js.get_stream(&name).await?;
    let last = stream.info().await?.state.last_sequence;
    Ok((name, last))
}

/// The id of the last message of `stream` (the start of an [`Ordered`] chain); `None` for
/// an empty stream.
async fn last_message_id(rt: &Runtime, stream: &str) -> Result<Option<String>, async_nats::Error> {
    let mut stream = rt.js.get_stream(stream).await?;
    let last = stream.info().await?.state.last_sequence;
    if last == 0 {
        return Ok(None);
    }
    let m = stream.get_raw_message(last).await?;
    Ok(m.headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_string()))
}

/// Hands a message to the client, retrying until it is accepted or we shut down.
async fn publish_until_sent(
    rt: &Runtime,
    sent: &Sent,
    metrics: &StageMetrics,
) -> Option<PublishAckFuture> {
    let mut delay = Duration::from_millis(50);
    loop {
        match rt
            .js
            .send_publish(sent.output.subject.clone(), publish_message(sent))
            .await
        {
            Ok(ack) => return Some(ack),
            Err(e) => {
                metrics.publish_retries.inc();
                warn!(subject = %sent.output.subject, error = %e, "publish failed; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Publishes `outputs` again (same ids, so never twice in a stream), all at once, until
/// JetStream confirms every one. False if shutdown came first.
///
/// All at once matters: after a server fails over, a whole batch's acks time out together,
/// and retrying them one by one would stall the stage for minutes.
async fn republish_all(
    rt: &Runtime,
    mut outputs: Vec<Sent>,
    ordered: Option<&Ordered>,
    metrics: &StageMetrics,
) -> bool {
    let mut delay = Duration::from_millis(50);
    let mut rounds = 0;
    while !outputs.is_empty() {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
        rounds += 1;
        if rounds == ORDERED_ATTEMPTS && outputs.iter().any(|s| s.expects.is_some()) {
            // A last resort: the check below keeps a stale server or another writer from
            // getting here.
            warn!(subject = %outputs[0].output.subject, "ordered outputs keep being refused: sending them without their expected predecessor");
            outputs.iter_mut().for_each(|s| s.expects = None);
        }
        // Everything before the first ordered output is stored by now (earlier batches are
        // confirmed first, and this list is in order). After a refusal, the stream says why:
        // it ends with that output's predecessor — the server's idea of the last id is stale
        // (a leader that restarted keeps no last id), so this one goes without the check,
        // nothing else of ours can land before it; or it ends with another writer's message
        // (an alert command), which this one follows. Not asked after a timeout: while a
        // server fails over, asking the stream would only wait on it too.
        let first = outputs.iter_mut().find(|s| s.chained);
        if let (Some(o), Some(first)) = (ordered, first.filter(|f| f.refused)) {
            if let Ok(Some(last)) = last_message_id(rt, &o.stream).await {
                if first.expects.as_deref() == Some(last.as_str()) {
                    first.expects = None;
                } else if last != first.output.msg_id {
                    first.expects = Some(last);
                }
            }
        }
        metrics.publish_retries.inc_by(outputs.len() as u64);
        let mut sent = Vec::with_capacity(outputs.len());
        for output in outputs.drain(..) {
            match publish_until_sent(rt, &output, metrics).await {
                Some(ack) => sent.push((output, ack)),
                None => return false,
            }
        }
        for (output, result) in acks_of(sent).await {
            if let Err(e) = result {
                outputs.push(output.failed(&e));
            }
        }
    }
    true
}

/// Where the confirmer makes things durable: the keyed state (with the output marks), or for
/// a stateless stage the log of its marks; and the marks so far.
struct Durable {
    store: Option<StateStore>,
    log: Option<StateStore>,
    marks: replay::Marks,
}

/// How often a stateless stage logs its output marks (each write is a flush).
const MARKS_LOG_EVERY: Duration = Duration::from_secs(1);

/// Awaits each batch's publish acks in order, republishing (same ids) what failed, commits
/// the batch's state, then acks its inputs. Inputs are never acked past an unconfirmed output
/// or an uncommitted state change.
async fn confirm(
    rt: Runtime,
    binding: Binding,
    mut rx: mpsc::Receiver<Pending>,
    metrics: StageMetrics,
    durable: Durable,
    snapshots: Option<SnapshotPolicy>,
) {
    let Durable {
        store,
        log,
        mut marks,
    } = durable;
    // The marks as last made durable: a birth writes these (plus itself), never marks moved
    // by outputs whose inputs are not yet committed.
    let mut committed = marks.clone();
    // A stateless stage logs the marks of its previous log: its last ack may be lost (the
    // consumer then resumes before it), but an ack a second older is covered by later ones.
    let mut previous = marks.clone();
    let mut last_logged = Instant::now();
    let mut last_snapshot = Instant::now();
    let mut upload: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_commit: Option<u64> = None;
    while let Some(pending) = rx.recv().await {
        let count = pending.outputs.len() as u64;
        if !pending.births.is_empty() {
            for (stream, last, subject) in &pending.births {
                committed.birth(stream, *last, subject);
                previous.birth(stream, *last, subject);
                marks.birth(stream, *last, subject);
            }
            if let Some(at) = store.as_ref().or(log.as_ref()) {
                if let Err(e) = at.save_marks(committed.encode()).await {
                    warn!(stage = binding.stage, error = %e, "cannot save output marks; replays rely on the duplicate window");
                }
            }
        }
        let mut failed = Vec::new();
        for (output, result) in acks_of(pending.outputs).await {
            match result {
                // Only first sends mark: see `replay` for why a republished one may not.
                Ok(ack) => marks.note(&ack.stream, ack.sequence),
                Err(e) => {
                    if failed.is_empty() {
                        warn!(stage = binding.stage, subject = %output.output.subject, error = %e, "publish not acknowledged; republishing");
                    }
                    failed.push(output.failed(&e));
                }
            }
        }
        if !republish_all(&rt, failed, binding.ordered.as_ref(), &metrics).await {
            // Shutting down: the inputs stay unacked, are redelivered and their outputs
            // republished (and deduplicated) by the next run.
            return;
        }
        metrics.events_out.inc_by(count);
        if !binding.fence.holds() {
            // Lost the unit: its new owner commits and acks from here on.
            return;
        }
        if let (Some((delta, seq)), Some(store)) = (pending.commit, &store) {
            let keys = delta.keys;
            match store.commit_marked(delta, seq, Some(marks.encode())).await {
                Ok(done) => {
                    committed = marks.clone();
                    metrics.checkpointed(&done, keys);
                    last_commit = Some(seq);
                }
                Err(e) => {
                    // Without a durable checkpoint the inputs must stay unacked.
                    warn!(stage = binding.stage, error = %e, "checkpoint failed; inputs stay unacked");
                    continue;
                }
            }
            if let Some(policy) = &snapshots {
                let idle = upload.as_ref().is_none_or(|u| u.is_finished());
                if idle && last_snapshot.elapsed() >= policy.every {
                    last_snapshot = Instant::now();
                    upload = snapshot(store, policy, &binding.fence).await;
                }
            }
        }
        if let Some(input) = pending.ack {
            let seq = position(&input).stream_seq;
            if let Err(e) = input.ack().await {
                // A lost ack only means a redelivery, which the output ids make harmless.
                debug!(stage = binding.stage, error = %e, "ack failed");
            }
            // Stale is fine: an older mark only makes a restart read back a little more.
            if let Some(log) = &log {
                if last_logged.elapsed() >= MARKS_LOG_EVERY && !marks.is_empty() {
                    last_logged = Instant::now();
                    committed = std::mem::replace(&mut previous, marks.clone());
                    if let Err(e) = log
                        .commit_marked(StateDelta::default(), seq, Some(committed.encode()))
                        .await
                    {
                        debug!(stage = binding.stage, error = %e, "cannot log output marks");
                    }
                }
            }
        }
        if let Some(done) = pending.done {
            let _ = done.send(());
        }
    }
    // Letting the unit go (a rebalance, a new version, a shutdown): leave the newest state for
    // whoever runs it next, so they replay nothing.
    if let (Some(policy), Some(store), Some(_)) = (&snapshots, &store, last_commit) {
        if let Some(u) = upload.take() {
            let _ = u.await;
        }
        if let Some(u) = snapshot(store, policy, &binding.fence).await {
            let _ = u.await;
        }
    }
}

/// Exports the committed state now (nothing commits meanwhile: we are the confirmer) and
/// uploads it in the background.
async fn snapshot(
    store: &StateStore,
    policy: &SnapshotPolicy,
    fence: &Fence,
) -> Option<tokio::task::JoinHandle<()>> {
    let epoch = fence.epoch()?;
    if !fence.holds() {
        return None;
    }
    let exported = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.export()).await
    };
    let image = match exported {
        Ok(Ok(image)) => image,
        Ok(Err(e)) => {
            warn!(unit = fence.unit(), error = %e, "cannot export state for a snapshot");
            return None;
        }
        Err(e) => {
            warn!(unit = fence.unit(), error = %e, "state export task failed");
            return None;
        }
    };
    let (policy, fence) = (policy.clone(), fence.clone());
    Some(tokio::spawn(async move {
        if !fence.holds() {
            return;
        }
        match policy.snapshots.save(&policy.name, epoch, &image).await {
            Ok(saved) => debug!(
                unit = fence.unit(),
                seq = saved.seq,
                bytes = saved.bytes,
                ms = saved.duration.as_millis() as u64,
                "state snapshot saved"
            ),
            Err(e) => warn!(unit = fence.unit(), error = %e, "state snapshot failed"),
        }
    }))
}
