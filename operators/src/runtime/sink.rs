//! The sink half of the runtime: a durable consumer whose messages are delivered to the
//! outside world (a webhook, later Slack or email) instead of republished.
//!
//! Each message is acked only after its delivery succeeded or, once its attempts are used
//! up, after it is safely in the dead-letter subject. Retries back off exponentially with
//! jitter; the message's ack deadline is extended while it waits, so the server does not
//! redeliver it meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::Message;
use futures::StreamExt;
use rand::Rng;
use tracing::{debug, warn};

use super::{publish_until_sent, republish_all, Binding, Emitter, Input, Runtime};
use crate::metrics::Metrics;
use crate::rejection::{RejectKind, Rejection};

/// Outcome of one delivery attempt.
pub enum Delivery {
    Delivered,
    /// Worth trying again (timeout, connection refused, 5xx, 429).
    Retry(String),
    /// Trying again will not help (4xx): dead-letter now.
    Fail(String),
}

/// Something alerts are delivered to.
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn deliver(&self, payload: &[u8]) -> impl std::future::Future<Output = Delivery> + Send;
}

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

/// Delivers every message of `binding` to `sink` until shutdown.
pub async fn run_sink<S: Sink>(
    rt: Runtime,
    binding: Binding,
    sink: Arc<S>,
    options: SinkOptions,
    metrics: Arc<Metrics>,
) {
    let stage = metrics.stage(&binding.pipeline, binding.stage);
    let outcome = |o: &str| {
        metrics
            .sink_deliveries
            .get_or_create_owned(&crate::metrics::SinkLabels {
                pipeline: binding.pipeline.clone(),
                sink: sink.name().to_string(),
                outcome: o.to_string(),
            })
    };
    let (delivered, retried, dead) = (
        outcome("delivered"),
        outcome("retried"),
        outcome("dead_lettered"),
    );
    while !rt.shutdown.is_cancelled() {
        if !binding.fence.holds() {
            break;
        }
        let messages = match rt.messages(&binding, AckPolicy::Explicit, 0, false).await {
            Ok((_, m)) => m,
            Err(e) => {
                warn!(sink = sink.name(), error = %e, "cannot open consumer; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let shutdown = rt.shutdown.clone();
        let fence = binding.fence.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = fence.lost() => {}
            }
        };
        messages
            .take_until(stop)
            .for_each_concurrent(options.concurrency, |msg| {
                let (rt, binding, sink, options, stage) = (&rt, &binding, &sink, &options, &stage);
                let (delivered, retried, dead) = (&delivered, &retried, &dead);
                async move {
                    let Ok(msg) = msg else { return };
                    if !binding.fence.holds() {
                        return; // its new owner delivers it
                    }
                    stage.events_in.inc();
                    let mut attempt = 1;
                    let failure = loop {
                        match sink.deliver(&msg.payload).await {
                            Delivery::Delivered => {
                                delivered.inc();
                                let _ = msg.ack().await;
                                return;
                            }
                            Delivery::Fail(reason) => break reason,
                            Delivery::Retry(reason) if attempt >= options.max_attempts => {
                                break format!("{attempt} attempts failed, last: {reason}")
                            }
                            Delivery::Retry(reason) => {
                                retried.inc();
                                debug!(sink = sink.name(), attempt, %reason, "delivery failed; retrying");
                                let _ = msg.ack_with(AckKind::Progress).await;
                                let wait = backoff(options, attempt);
                                tokio::select! {
                                    // Unacked: redelivered after restart, nothing lost.
                                    _ = rt.shutdown.cancelled() => return,
                                    _ = tokio::time::sleep(wait) => {}
                                }
                                attempt += 1;
                            }
                        }
                    };
                    warn!(sink = sink.name(), %failure, "giving up; dead-lettering the alert");
                    dead.inc();
                    dead_letter(rt, binding, stage, &msg, sink.name(), failure).await;
                }
            })
            .await;
    }
}

fn backoff(options: &SinkOptions, attempt: u32) -> Duration {
    let base = options
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(options.max_backoff);
    // Full jitter on half the delay: spreads retries of many alerts without long stalls.
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

async fn dead_letter(
    rt: &Runtime,
    binding: &Binding,
    stage: &crate::metrics::StageMetrics,
    msg: &Message,
    sink: &str,
    failure: String,
) {
    let (seq, published_us) = msg
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
        stream_seq: seq,
        published_us,
    };
    let mut out = Emitter::new(binding.stage, &binding.durable);
    let rejection = Rejection::new(RejectKind::Delivery, format!("sink `{sink}`: {failure}"));
    out.reject(&input, &binding.pipeline, &msg.payload, 0, None, &rejection);
    stage.dead_letter(&binding.pipeline, RejectKind::Delivery.as_str());
    for output in out.outputs {
        let sent = match publish_until_sent(rt, &output, stage).await {
            Some(ack) => ack.await.is_ok() || republish_all(rt, vec![output.clone()], stage).await,
            None => false,
        };
        if !sent {
            return; // shutting down: the alert stays unacked and is retried after restart
        }
    }
    let _ = msg.ack().await;
}
