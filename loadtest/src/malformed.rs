//! Bad input at scale: malformed events of every kind mixed into good ones, through the
//! benchmark pipeline. Every bad one must come back from the dead-letter stream once, with its
//! reason and the kind its fault has; every good one must alert as the throughput run's do.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anom_pipeline::subjects::{dlq_subject, headers, DLQ_STREAM};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use bytes::Bytes;
use futures::StreamExt;

use crate::pipeline::{
    definition, drained, expected_records, publish_acked, sample_event, start_with,
};
use crate::Args;

/// The bench pipeline's event limit in this run: small, so that oversized events are cheap.
const MAX_EVENT_BYTES: usize = 1024;

/// One way an event can be wrong, and the reason kind Anom must give it.
struct Fault {
    name: &'static str,
    kind: &'static str,
    make: fn(usize) -> Vec<u8>,
}

const FINISHED: &str = r#""finishedAt":"2026-11-20T10:00:00Z""#;

/// Every fault's payload carries `bad-<fault>-<n>` where it can, so that a dead letter can be
/// traced to the fault it was made with.
const FAULTS: &[Fault] = &[
    Fault {
        name: "truncated JSON",
        kind: "decode",
        make: |n| format!(r#"{{"route":"R-1","fileName":"bad-0-{n}","status":"O"#).into_bytes(),
    },
    Fault {
        name: "not JSON",
        kind: "decode",
        make: |n| format!("bad-1-{n} route=R-1 status=OK").into_bytes(),
    },
    Fault {
        name: "JSON array",
        kind: "schema",
        make: |n| format!(r#"["bad-2-{n}","R-1","OK"]"#).into_bytes(),
    },
    Fault {
        name: "wrong type",
        kind: "schema",
        make: |n| {
            format!(r#"{{"route":"R-1","status":"OK","durationMs":"slow","fileName":"bad-3-{n}",{FINISHED}}}"#)
                .into_bytes()
        },
    },
    Fault {
        name: "value not in the enum",
        kind: "schema",
        make: |n| {
            format!(r#"{{"route":"R-1","status":"MAYBE","durationMs":5,"fileName":"bad-4-{n}",{FINISHED}}}"#)
                .into_bytes()
        },
    },
    Fault {
        name: "below the minimum",
        kind: "schema",
        make: |n| {
            format!(r#"{{"route":"R-1","status":"OK","durationMs":-5,"fileName":"bad-5-{n}",{FINISHED}}}"#)
                .into_bytes()
        },
    },
    Fault {
        name: "required field missing",
        kind: "schema",
        make: |n| {
            format!(r#"{{"route":"R-1","status":"OK","durationMs":5,"fileName":"bad-6-{n}"}}"#)
                .into_bytes()
        },
    },
    Fault {
        // The bench schema requires its key, so a missing or null key is a schema fault there
        // (`missing_key` is for keys a schema leaves optional, and for blank ones).
        name: "key missing (required)",
        kind: "schema",
        make: |n| {
            format!(r#"{{"status":"OK","durationMs":5,"fileName":"bad-7-{n}",{FINISHED}}}"#)
                .into_bytes()
        },
    },
    Fault {
        name: "key null (required)",
        kind: "schema",
        make: |n| {
            format!(
                r#"{{"route":null,"status":"OK","durationMs":5,"fileName":"bad-8-{n}",{FINISHED}}}"#
            )
            .into_bytes()
        },
    },
    Fault {
        name: "key empty",
        kind: "missing_key",
        make: |n| {
            format!(
                r#"{{"route":"","status":"OK","durationMs":5,"fileName":"bad-9-{n}",{FINISHED}}}"#
            )
            .into_bytes()
        },
    },
    Fault {
        name: "timestamp unreadable",
        kind: "schema",
        make: |n| {
            format!(r#"{{"route":"R-1","status":"OK","durationMs":5,"fileName":"bad-10-{n}","finishedAt":"yesterday"}}"#)
                .into_bytes()
        },
    },
    Fault {
        name: "over max_event_bytes",
        kind: "too_large",
        make: |n| {
            format!(
                r#"{{"route":"R-1","status":"OK","durationMs":5,"fileName":"bad-11-{n}{}",{FINISHED}}}"#,
                "x".repeat(MAX_EVENT_BYTES)
            )
            .into_bytes()
        },
    },
    Fault {
        name: "invalid UTF-8",
        kind: "decode",
        make: |n| {
            let mut b =
                format!(r#"{{"route":"R-1","status":"OK","durationMs":5,"fileName":"bad-12-{n} "#)
                    .into_bytes();
            b.extend_from_slice(b"\xff\xfe\"}");
            b
        },
    },
    Fault {
        name: "MessagePack, wrong type",
        kind: "schema",
        make: |n| {
            rmp_serde::to_vec_named(&serde_json::json!({
                "route": "R-1", "status": "OK", "durationMs": "slow",
                "fileName": format!("bad-13-{n}"), "finishedAt": "2026-11-20T10:00:00Z",
            }))
            .unwrap_or_default()
        },
    },
    Fault {
        name: "MessagePack, truncated",
        kind: "decode",
        make: |n| {
            let mut b = rmp_serde::to_vec_named(&serde_json::json!({
                "fileName": format!("bad-14-{n}"), "route": "R-1", "status": "OK",
            }))
            .unwrap_or_default();
            b.truncate(b.len() - 3);
            b
        },
    },
    Fault {
        name: "nested 400 deep",
        kind: "schema",
        make: |n| {
            format!(
                r#"{{"fileName":"bad-15-{n}","route":"R-1","status":"OK","durationMs":{}{}}}"#,
                "[".repeat(400),
                "]".repeat(400)
            )
            .into_bytes()
        },
    },
    Fault {
        name: "NDJSON batch, bad 2nd line",
        kind: "schema",
        make: |n| {
            // The good first line goes on (its own key, never alerting); the second is refused
            // alone, with its line.
            format!(
                "{{\"route\":\"NDJSON-OK\",\"status\":\"OK\",\"durationMs\":5,{FINISHED}}}\n\
                 {{\"route\":\"R-1\",\"status\":\"LATE\",\"durationMs\":5,\"fileName\":\"bad-16-{n}\",{FINISHED}}}\n"
            )
            .into_bytes()
        },
    },
];

/// Which fault a dead letter's payload was made with.
fn fault_of(payload: &[u8]) -> Option<usize> {
    let at = payload.windows(4).position(|w| w == b"bad-")?;
    let digits: String = payload[at + 4..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect();
    digits.parse().ok().filter(|f| *f < FAULTS.len())
}

pub struct Malformed {
    pub good: usize,
    pub bad: usize,
    pub seconds: f64,
    pub alerts: u64,
    pub expected_alerts: u64,
    pub baseline: f64,
    /// Per fault: dead letters, and those whose kind was another than expected.
    pub per_fault: Vec<(usize, usize)>,
    pub untraced: usize,
    pub duplicates: usize,
    pub without_reason: usize,
    pub sample_reasons: BTreeMap<usize, String>,
}

impl Malformed {
    /// Whether every promise held.
    pub fn held(&self) -> bool {
        self.alerts == self.expected_alerts
            && self.per_fault.iter().map(|(n, _)| n).sum::<usize>() == self.bad
            && self.per_fault.iter().all(|(_, wrong)| *wrong == 0)
            && self.untraced == 0
            && self.duplicates == 0
            && self.without_reason == 0
    }

    pub fn markdown(&self) -> String {
        let total = self.good + self.bad;
        let rate = total as f64 / self.seconds;
        let mut out = format!(
            "{} good and {} malformed events ({} kinds of fault, interleaved), {:.1} s: \
             **{rate:.0} events/s** ({:.2}× the raw hop of {:.0} msg/s measured in the same run)\n\n",
            self.good,
            self.bad,
            FAULTS.len(),
            self.seconds,
            rate / self.baseline,
            self.baseline
        );
        out += &format!(
            "alert records: {} (expected {}); dead letters without a reason: {}; duplicated: {}; \
             not traceable to a fault: {}; {}\n\n",
            self.alerts,
            self.expected_alerts,
            self.without_reason,
            self.duplicates,
            self.untraced,
            if self.held() {
                "**every promise held**"
            } else {
                "**FAILED**"
            }
        );
        out += "| fault | sent | dead-lettered | kind | other kind | a reason given |\n|---|---|---|---|---|---|\n";
        for (i, f) in FAULTS.iter().enumerate() {
            let sent = (0..self.bad).filter(|n| n % FAULTS.len() == i).count();
            let (got, wrong) = self.per_fault[i];
            out += &format!(
                "| {} | {sent} | {got} | `{}` | {wrong} | {} |\n",
                f.name,
                f.kind,
                self.sample_reasons
                    .get(&i)
                    .map(|r| r.replace('|', "\\|"))
                    .unwrap_or_default()
            );
        }
        out
    }
}

/// Publishes `good` events with `bad` malformed ones spread evenly among them, as fast as the
/// server acks, and times until every good one's alerts are stored and every bad one is in the
/// dead-letter stream; then reads the dead letters back and checks each.
pub async fn run(url: &str, args: &Args, good: usize, bad: usize) -> anyhow::Result<Malformed> {
    let size = sample_event(0, 0, 1, args.keys).len();
    eprintln!(
        "baseline: raw JetStream hop, {} messages of {size} B ...",
        args.events
    );
    let baseline = crate::baseline::hop(url, args.events, size).await?.rate();

    let yaml = format!(
        "{}max_event_bytes: {MAX_EVENT_BYTES}\n",
        definition(args.partitions, false, false, None, true)
    );
    let (shutdown, worker) = start_with(url, args, &yaml).await?;
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let expected_alerts = expected_records(good, args.alert_every, args.keys);
    let subject = anom_pipeline::subjects::input_subject("bench");
    eprintln!("malformed: {good} good and {bad} malformed events ...");
    let started = Instant::now();
    let (mut g, mut b) = (0usize, 0usize);
    // Bad ones are spread evenly among the good: after good event g, bad up to g·bad/good.
    let payloads = std::iter::from_fn(|| {
        if g >= good && b >= bad {
            return None;
        }
        Some(if b < bad && (g >= good || b * good < g * bad) {
            b += 1;
            Bytes::from((FAULTS[(b - 1) % FAULTS.len()].make)(b - 1))
        } else {
            g += 1;
            sample_event(g - 1, 0, args.alert_every, args.keys)
        })
    });
    publish_acked(&js, &subject, payloads).await?;
    let mut alerts = js.get_stream("ANOM_BENCH_ALERTS").await?;
    let mut dlq = js.get_stream(DLQ_STREAM).await?;
    loop {
        let stored = alerts.info().await?.state.messages;
        let dead = dlq.info().await?.state.messages;
        if stored >= expected_alerts
            && dead >= bad as u64
            && drained(&js, args.partitions, false, false, true).await?
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let alerts = alerts.info().await?.state.messages;
    shutdown.cancel();
    worker.await?;

    eprintln!("malformed: reading the dead letters back ...");
    let mut per_fault = vec![(0usize, 0usize); FAULTS.len()];
    let (mut untraced, mut without_reason) = (0, 0);
    let mut sources = HashSet::new();
    let mut duplicates = 0;
    let mut sample_reasons = BTreeMap::new();
    let consumer = dlq
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            filter_subject: dlq_subject("bench"),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut pending = dlq.info().await?.state.messages;
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default()
            };
            let (kind, reason) = (header(headers::REASON_KIND), header(headers::REASON));
            if reason.trim().is_empty() || kind.is_empty() {
                without_reason += 1;
            }
            let source = (
                header(headers::SOURCE_SEQUENCE),
                header(headers::SOURCE_LINE),
            );
            if !sources.insert(source) {
                duplicates += 1;
            }
            match fault_of(&m.payload) {
                Some(f) => {
                    per_fault[f].0 += 1;
                    if kind != FAULTS[f].kind {
                        per_fault[f].1 += 1;
                        sample_reasons
                            .entry(f)
                            .or_insert_with(|| format!("**{kind}**: {reason}"));
                    } else {
                        sample_reasons.entry(f).or_insert(reason);
                    }
                }
                None => {
                    untraced += 1;
                    eprintln!(
                        "untraced dead letter ({kind}: {reason}): {:?}",
                        String::from_utf8_lossy(&m.payload[..m.payload.len().min(120)])
                    );
                }
            }
        }
        if got == 0 {
            break;
        }
        pending = pending.saturating_sub(got);
    }
    Ok(Malformed {
        good,
        bad,
        seconds,
        alerts,
        expected_alerts,
        baseline,
        per_fault,
        untraced,
        duplicates,
        without_reason,
        sample_reasons,
    })
}
