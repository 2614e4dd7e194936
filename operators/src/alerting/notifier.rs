//! The notifier of one sink of one pipeline: Alertmanager's dispatcher in one task.
//!
//! It watches the pipeline's alerts (`ANOM_ALERTS`) and silences (`ANOM_SILENCES`), puts
//! each alert the routing tree sends to this sink into its route's group (by the route's
//! `group_by` labels), and flushes each group `group_wait` after it formed, then every
//! `group_interval`: silenced and inhibited alerts are left out, the notification log says
//! whether anything is new (or `repeat_interval` passed), the rate limit may postpone it, and
//! a notification is logged as pending, sent with retries, and dead-lettered after its
//! attempts. Deliveries run in their own tasks, one per group at a time.

use anom_runtime::timebase::wall_ms;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::nflog::{self, Entry};
use super::notification::{GroupStatus, Notification};
use super::silence::Silence;
use super::store::{self, Buckets, NFLOG_BUCKET, SILENCES_BUCKET};
use crate::alerting::record::{rfc3339_ms, Alert, AlertStatus};
use crate::sink::{AnySink, Delivery};
use anom_pipeline::rejection::RejectKind;
use anom_pipeline::subjects::{dlq_subject, headers};
use anom_pipeline::unit::kv_safe;
use anom_pipeline::{Grouping, Pipeline, RateLimit, Retry, SinkDef};
use anom_runtime::fence::Fence;
use anom_runtime::metrics::{Metrics, SinkLabels};
use anom_runtime::Runtime;

/// How often groups are checked for a due flush.
const TICK: Duration = Duration::from_millis(100);

/// Deliveries in flight at once (each for another group).
const CONCURRENCY: usize = 8;

struct Group {
    labels: BTreeMap<String, String>,
    grouping: Grouping,
    alerts: HashSet<String>,
    next_flush_ms: i64,
}

/// A token bucket: `count` notifications per `per`, refilled continuously.
struct Limiter {
    tokens: f64,
    limit: RateLimit,
    at_ms: i64,
}

impl Limiter {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now_ms: i64) -> Result<(), i64> {
        let per_ms = self.limit.per.as_millis() as f64 / f64::from(self.limit.count);
        self.tokens =
            (self.tokens + (now_ms - self.at_ms) as f64 / per_ms).min(f64::from(self.limit.count));
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) * per_ms).ceil() as i64)
        }
    }
}

struct Counters {
    delivered: Counter,
    retried: Counter,
    dead: Counter,
    suppressed: Counter,
}

pub struct Notifier {
    pipeline: Arc<Pipeline>,
    def: SinkDef,
    sink: Arc<AnySink>,
    js: jetstream::Context,
    buckets: Buckets,
    alerts: HashMap<String, Alert>,
    silences: HashMap<String, Silence>,
    groups: HashMap<String, Group>,
    log: HashMap<String, Entry>,
    in_flight: HashSet<String>,
    /// The delivery tasks: a notifier that stops lets each finish the attempt it is making
    /// and log the outcome, so that only a crash can leave one to be sent again.
    deliveries: tokio::task::JoinSet<()>,
    /// Cancelled when the notifier stops: deliveries start no new attempt after it.
    stopping: CancellationToken,
    limiter: Option<Limiter>,
    counters: Arc<Counters>,
}

/// Runs the notifier of sink `def` until `shutdown` or the fence is lost. Every error is
/// retried: a notifier never gives up on its alerts.
pub async fn run(
    rt: Runtime,
    buckets: Buckets,
    pipeline: Arc<Pipeline>,
    def: SinkDef,
    sink: AnySink,
    fence: Fence,
    metrics: Arc<Metrics>,
) {
    let Runtime { js, shutdown, .. } = rt;
    let outcome = |o: &str| {
        metrics.sink_deliveries.get_or_create_owned(&SinkLabels {
            pipeline: pipeline.name.clone(),
            sink: def.name().to_string(),
            outcome: o.to_string(),
        })
    };
    let counters = Arc::new(Counters {
        delivered: outcome("delivered"),
        retried: outcome("retried"),
        dead: outcome("dead_lettered"),
        suppressed: outcome("suppressed"),
    });
    let mut n = Notifier {
        limiter: def.rate_limit().map(|limit| Limiter {
            tokens: f64::from(limit.count),
            limit,
            at_ms: wall_ms(),
        }),
        pipeline,
        def,
        sink: Arc::new(sink),
        js,
        buckets,
        alerts: HashMap::new(),
        silences: HashMap::new(),
        groups: HashMap::new(),
        log: HashMap::new(),
        in_flight: HashSet::new(),
        deliveries: tokio::task::JoinSet::new(),
        stopping: CancellationToken::new(),
        counters,
    };
    // A request in progress may take the sink's timeout; one still running after this is
    // abandoned (its notification stays pending in the log and is re-sent by the next owner).
    let drain = n.def.timeout() + Duration::from_secs(5);
    while !shutdown.is_cancelled() && fence.holds() {
        let stop = {
            let (shutdown, fence) = (shutdown.clone(), fence.clone());
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = fence.lost() => {}
                }
            }
        };
        let again = tokio::select! {
            _ = stop => false,
            r = n.serve(&fence) => match r {
                Ok(()) => false,
                Err(e) => {
                    warn!(pipeline = %n.pipeline.name, sink = n.def.name(), error = %e, "notifier failed; starting over");
                    true
                }
            },
        };
        // Whether it stops (shutdown, a move to another worker, a new version) or starts
        // over, what is being delivered finishes first: the next start (here or on another
        // worker) reads the log once these outcomes are in it, and re-sends nothing that
        // was delivered.
        n.drain(drain).await;
        if !again {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Notifier {
    async fn drain(&mut self, bound: Duration) {
        self.stopping.cancel();
        let finished = tokio::time::timeout(bound, async {
            while self.deliveries.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            warn!(pipeline = %self.pipeline.name, sink = self.def.name(), in_flight = self.deliveries.len(), "deliveries still running after {bound:?}; abandoned (re-sent by the next start)");
            self.deliveries.abort_all();
            while self.deliveries.join_next().await.is_some() {}
        }
        self.stopping = CancellationToken::new();
    }

    async fn serve(&mut self, fence: &Fence) -> Result<(), async_nats::Error> {
        let p = self.pipeline.name.clone();
        let sink = self.def.name().to_string();
        let (done_tx, mut done_rx) = mpsc::channel::<(String, Entry)>(CONCURRENCY * 4);
        // What was sent before, and what was about to be: send that again, same id.
        self.log.clear();
        self.in_flight.clear();
        self.groups.clear();
        let entries: Vec<Entry> = store::load_all(
            &self.buckets.nflog,
            NFLOG_BUCKET,
            &format!("{p}.{}", kv_safe(&sink)),
        )
        .await?;
        for e in entries {
            if let Some(pending) = e.pending.clone() {
                info!(pipeline = %p, sink, notification = %pending.id, "a notification was in flight: re-sent unless its earlier owner logs it delivered");
                self.in_flight.insert(e.group_key.clone());
                let resume = Some(self.def.timeout() + Duration::from_secs(1));
                self.spawn_delivery(e.group_key.clone(), e.clone(), 0, resume, pending, &done_tx);
            }
            self.log.insert(e.group_key.clone(), e);
        }
        // With history: the current record of every key first (after a restart, the alerts
        // and silences as they stand), then each change.
        let mut alerts = self
            .buckets
            .alerts
            .watch_with_history(format!("{p}.>"))
            .await?;
        let mut silences = self
            .buckets
            .silences
            .watch_with_history(format!("{p}.>"))
            .await?;
        let mut last_cleanup = std::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                entry = alerts.next() => {
                    let entry = entry.ok_or("alert watch ended")??;
                    self.on_alert(&entry);
                }
                entry = silences.next() => {
                    let entry = entry.ok_or("silence watch ended")??;
                    match entry.operation {
                        kv::Operation::Put => {
                            if let Ok(s) = store::decode::<Silence>(SILENCES_BUCKET, &entry.key, &entry.value) {
                                self.silences.insert(entry.key, s);
                            }
                        }
                        _ => { self.silences.remove(&entry.key); }
                    }
                }
                Some((group, entry)) = done_rx.recv() => {
                    self.in_flight.remove(&group);
                    self.log.insert(group, entry);
                }
                _ = tick.tick() => {
                    if !fence.holds() {
                        return Ok(());
                    }
                    self.flush_due(&done_tx).await?;
                    if last_cleanup.elapsed() >= Duration::from_secs(10) {
                        self.forget_resolved();
                        last_cleanup = std::time::Instant::now();
                    }
                }
            }
        }
    }

    fn on_alert(&mut self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Ok(alert) = store::decode::<Alert>(store::ALERTS_BUCKET, &entry.key, &entry.value)
        else {
            warn!(key = %entry.key, "undecodable alert record; skipped");
            return;
        };
        // A write that landed after a newer one (see `store::ALERT_HISTORY`) is old news.
        if self
            .alerts
            .get(&alert.id)
            .is_some_and(|known| known.version > alert.version)
        {
            return;
        }
        let now = wall_ms();
        let sink = self.def.name();
        for route in self.pipeline.alerting.route.matching(&alert.labels) {
            if !route.sinks.iter().any(|s| s == sink) {
                continue;
            }
            let (key, labels) = route.group_of(&alert.labels);
            let group = self.groups.entry(key).or_insert_with(|| Group {
                labels,
                grouping: route.group.clone(),
                alerts: HashSet::new(),
                next_flush_ms: now + route.group.wait.as_millis() as i64,
            });
            group.alerts.insert(alert.id.clone());
        }
        self.alerts.insert(alert.id.clone(), alert);
    }

    /// Whether a silence or an inhibition keeps `a` out of notifications.
    /// Forgets alerts ten minutes after they resolved and left every group (inhibition and
    /// late flushes are done with them by then).
    fn forget_resolved(&mut self) {
        let now = wall_ms();
        let grouped: HashSet<&String> = self.groups.values().flat_map(|g| &g.alerts).collect();
        let keep: HashSet<String> = self
            .alerts
            .values()
            .filter(|a| {
                a.status.is_active() || grouped.contains(&a.id) || now - updated_ms(a) < 600_000
            })
            .map(|a| a.id.clone())
            .collect();
        self.alerts.retain(|id, _| keep.contains(id));
    }

    /// Whether a silence or an inhibition keeps `a` out of notifications. `sources`: per
    /// inhibition rule, the active alerts its `source` matchers take (see [`Self::sources`]).
    fn muted(&self, a: &Alert, sources: &[Vec<&Alert>], now: i64) -> bool {
        if self.silences.values().any(|s| s.mutes(&a.labels, now)) {
            return true;
        }
        a.status.is_active()
            && self
                .pipeline
                .alerting
                .inhibit
                .iter()
                .zip(sources)
                .any(|(rule, sources)| {
                    sources
                        .iter()
                        .any(|source| source.id != a.id && rule.mutes(&source.labels, &a.labels))
                })
    }

    /// The firing alerts each inhibition rule's `source` matches: computed once per flush,
    /// usually a handful (the critical ones), so muting is not a scan of every alert.
    fn sources(&self) -> Vec<Vec<&Alert>> {
        self.pipeline
            .alerting
            .inhibit
            .iter()
            .map(|rule| {
                self.alerts
                    .values()
                    .filter(|s| {
                        s.status.is_active()
                            && anom_pipeline::matcher::all_match(&rule.source, &s.labels)
                    })
                    .collect()
            })
            .collect()
    }

    async fn flush_due(
        &mut self,
        done: &mpsc::Sender<(String, Entry)>,
    ) -> Result<(), async_nats::Error> {
        let now = wall_ms();
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(k, g)| g.next_flush_ms <= now && !self.in_flight.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if self.in_flight.len() >= CONCURRENCY {
                break;
            }
            self.flush(&key, now, done).await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        key: &str,
        now: i64,
        done: &mpsc::Sender<(String, Entry)>,
    ) -> Result<(), async_nats::Error> {
        let Some(group) = self.groups.get(key) else {
            return Ok(());
        };
        let mut current = nflog::Current::default();
        let mut members: Vec<Alert> = Vec::new();
        let mut suppressed = 0;
        let sources = self.sources();
        for id in &group.alerts {
            let Some(a) = self.alerts.get(id) else {
                continue;
            };
            if self.muted(a, &sources, now) {
                suppressed += 1;
                continue;
            }
            let tag = format!("{}@{}", a.id, a.starts_at);
            match a.status {
                AlertStatus::Firing => {
                    current.unacknowledged = true;
                    current.firing.insert(tag);
                }
                AlertStatus::Acknowledged => {
                    current.firing.insert(tag.clone());
                    current.acknowledged.insert(tag);
                }
                AlertStatus::Resolved => {
                    current.resolved.insert(tag);
                }
            }
            members.push(a.clone());
        }
        let grouping = group.grouping.clone();
        let group_labels = group.labels.clone();
        let entry = self.log.get(key);
        let send_resolved = self.def.send_resolved();
        let update = nflog::needs_update(
            entry,
            &current,
            send_resolved,
            self.def.send_acknowledged(),
            grouping.repeat.as_millis() as i64,
            now,
        );
        if update {
            if let Some(limiter) = &mut self.limiter {
                if let Err(wait) = limiter.take(now) {
                    debug!(group = key, wait, "rate limited; the group waits");
                    if let Some(g) = self.groups.get_mut(key) {
                        g.next_flush_ms = now + wait;
                    }
                    return Ok(());
                }
            }
            let sequence = entry.map_or(0, |e| e.sequence);
            if !send_resolved {
                members.retain(|a| a.status.is_active());
            }
            // Firing first, then by when they started.
            members.sort_by(|a, b| {
                (!a.status.is_active(), &a.starts_at, &a.id).cmp(&(
                    !b.status.is_active(),
                    &b.starts_at,
                    &b.id,
                ))
            });
            let p = &self.pipeline.name;
            let sink = self.def.name();
            let pending = (!members.is_empty()).then(|| Notification {
                id: format!("{p}:{sink}:{}:{sequence}", group_hash(key)),
                pipeline: p.clone(),
                sink: sink.to_string(),
                status: if current.firing.is_empty() {
                    GroupStatus::Resolved
                } else {
                    GroupStatus::Firing
                },
                group_key: key.to_string(),
                group_labels,
                alerts: members,
                sequence,
                sent_at: rfc3339_ms(now),
            });
            let logged = Entry {
                group_key: key.to_string(),
                firing: current.firing,
                resolved: current.resolved,
                acknowledged: current.acknowledged,
                sent_ms: now,
                sequence: sequence + 1,
                pending: pending.clone(),
            };
            // Logged before it is sent: a crash from here on re-sends it, same id.
            let revision = self
                .buckets
                .nflog
                .put(self.log_key(key), serde_json::to_vec(&logged)?.into())
                .await?;
            if let Some(n) = pending {
                self.in_flight.insert(key.to_string());
                self.spawn_delivery(key.to_string(), logged.clone(), revision, None, n, done);
            }
            self.log.insert(key.to_string(), logged);
        }
        if suppressed > 0 && update {
            self.counters.suppressed.inc_by(suppressed);
        }
        // Resolved alerts leave the group once notified (or once there was nothing to say).
        let alerts = &self.alerts;
        if let Some(g) = self.groups.get_mut(key) {
            g.alerts
                .retain(|id| alerts.get(id).is_some_and(|a| a.status.is_active()));
            g.next_flush_ms = now + grouping.interval.as_millis() as i64;
            if g.alerts.is_empty() {
                self.groups.remove(key);
            }
        }
        Ok(())
    }

    fn log_key(&self, group_key: &str) -> String {
        format!(
            "{}.{}.{}",
            self.pipeline.name,
            kv_safe(self.def.name()),
            group_hash(group_key)
        )
    }

    /// Sends `n`, logged as pending at `revision` of its log key: the outcome is logged only
    /// over that revision, so a delivery that outlived its notifier (abandoned, or after a
    /// move) never overwrites what a newer owner logged since.
    ///
    /// `resume`: `n` was found pending at start. Its earlier owner may be on another worker,
    /// still finishing the attempt it was making when the unit moved: for up to this long
    /// the log is watched, and if that owner logs the outcome, nothing is sent again. Only
    /// when it does not (it crashed) is `n` re-sent, with the same id.
    fn spawn_delivery(
        &mut self,
        group: String,
        logged: Entry,
        revision: u64,
        resume: Option<Duration>,
        n: Notification,
        done: &mpsc::Sender<(String, Entry)>,
    ) {
        let sink = self.sink.clone();
        let retry = self.def.retry();
        let js = self.js.clone();
        let nflog = self.buckets.nflog.clone();
        let log_key = self.log_key(&group);
        let counters = self.counters.clone();
        let done = done.clone();
        let shutdown = self.stopping.clone();
        self.deliveries.spawn(async move {
            let mut revision = revision;
            if let Some(wait) = resume {
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    if let Ok(Some(e)) = nflog.entry(&log_key).await {
                        revision = e.revision;
                        if let Ok(entry) = serde_json::from_slice::<Entry>(&e.value) {
                            if entry.pending.as_ref().map(|p| &p.id) != Some(&n.id) {
                                debug!(notification = %n.id, "its earlier owner logged it; not re-sent");
                                let _ = done.send((group, entry)).await;
                                return;
                            }
                        }
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                info!(notification = %n.id, "re-sending a notification that was in flight");
            }
            let mut attempt = 1;
            let failure = loop {
                match sink.send(&n).await {
                    Delivery::Delivered => {
                        counters.delivered.inc();
                        break None;
                    }
                    Delivery::Fail(reason) => break Some(reason),
                    Delivery::Retry(reason) if attempt >= retry.max_attempts => {
                        break Some(format!("{attempt} attempts failed, last: {reason}"))
                    }
                    Delivery::Retry(reason) => {
                        counters.retried.inc();
                        debug!(notification = %n.id, attempt, %reason, "delivery failed; retrying");
                        tokio::select! {
                            // Still pending in the log: re-sent after restart.
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff(retry, attempt)) => {}
                        }
                        attempt += 1;
                    }
                }
            };
            if let Some(reason) = failure {
                warn!(notification = %n.id, sink = sink.name(), %reason, "giving up; dead-lettering the notification");
                counters.dead.inc();
                loop {
                    if dead_letter(&js, &n, sink.name(), &reason).await.is_ok() {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            let sent = Entry {
                pending: None,
                ..logged
            };
            let bytes = serde_json::to_vec(&sent).expect("log entries serialize");
            loop {
                match nflog.update(&log_key, bytes.clone().into(), revision).await {
                    Ok(_) => break,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        debug!(notification = %n.id, "the log moved on since this was sent; not logged");
                        return;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let _ = done.send((group, sent)).await;
        });
    }
}

/// Exponential backoff with jitter on half the delay: spreads retries of many groups
/// without long stalls.
pub fn backoff(retry: Retry, attempt: u32) -> Duration {
    let base = retry
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(retry.max_backoff);
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

async fn dead_letter(
    js: &jetstream::Context,
    n: &Notification,
    sink: &str,
    reason: &str,
) -> Result<(), async_nats::Error> {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        headers::REASON,
        format!("sink `{sink}`: {reason}")
            .replace(['\r', '\n'], " ")
            .as_str(),
    );
    h.insert(headers::REASON_KIND, RejectKind::Delivery.as_str());
    h.insert(headers::STAGE, "sink");
    h.insert(headers::CONTENT_TYPE, "application/json");
    h.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}:dlq", n.id).as_str(),
    );
    js.publish_with_headers(dlq_subject(&n.pipeline), h, serde_json::to_vec(n)?.into())
        .await?
        .await?;
    Ok(())
}

fn group_hash(group_key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(group_key.as_bytes()))
}

fn updated_ms(a: &Alert) -> i64 {
    super::silence::millis(&a.updated_at).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_lets_a_burst_through_then_says_how_long_to_wait() {
        let limit: RateLimit = "3/s".parse().unwrap();
        let mut l = Limiter {
            tokens: 3.0,
            limit,
            at_ms: 0,
        };
        assert!(l.take(0).is_ok() && l.take(0).is_ok() && l.take(0).is_ok());
        assert_eq!(l.take(0), Err(334), "one token every 333.3 ms");
        assert_eq!(l.take(200), Err(134));
        assert!(l.take(334).is_ok());
        // Idle time refills up to the limit, not beyond.
        assert!((0..3).all(|_| l.take(10_000).is_ok()));
        assert!(l.take(10_000).is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let retry = Retry {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for (attempt, base) in [(1, 100), (2, 200), (3, 400), (5, 1000), (9, 1000)] {
            let d = backoff(retry, attempt).as_millis() as u64;
            assert!((base / 2..=base).contains(&d), "attempt {attempt}: {d} ms");
        }
    }
}
