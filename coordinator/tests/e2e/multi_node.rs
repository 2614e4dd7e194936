//! Anom distributed on one machine: a 3-node NATS JetStream cluster (streams and buckets with
//! 3 replicas), a coordinator and three workers as separate processes. Under a steady keyed
//! load we add a worker, SIGKILL a worker, kill a NATS node and restart the coordinator; each
//! time units are reassigned (or kept) and processing resumes within 15 s, and at the end no
//! event is lost, no alert duplicated, and the aggregates equal an undisturbed run's.
//!
//! A NATS failover can reorder a partition's events unless the pipeline asks for order
//! (`units: ordered: true`, tested in `ordering.rs`; this pipeline does not): a batch whose
//! publish acks were lost is republished after later ones, so what depends on the order of a
//! key's events (which event is the 25th, what the running sum was when an event came) may
//! differ from the undisturbed run for the keys involved. The test compares what does not
//! (every event counted once, each key's final count and sum, how often `every_25th` fired
//! per key), and requires identical alert sets when no key saw its events out of order (as
//! its fused unit processed them).
//!
//! The timings (time to reassign, throughput dip) are printed: run with `--nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    cluster_view, coordinator_channel, free_addr, read_stream, spawn_cluster_worker,
    spawn_coordinator, stream_len, wait_for, Env,
};
use anom_testkit::cluster::Cluster;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tokio::process::Child;

const PIPELINE: &str = r#"
name: spend
key: user
event_time: at
partitions: 6
# The enriched events leave the fused units: the test reads them back.
units:
  publish_enriched: true
# Event time runs 12,000× faster than the clock here: a few seconds of reordering by a NATS
# failover is hours of event time, which must not count as late.
allowed_lateness: 30d
schema:
  user:   { type: string, required: true }
  amount: { type: int, required: true }
  at:     { type: timestamp, required: true }
aggregates:
  n: count()
  n_1h: count() over 1h
  total: sum(amount)
  today: sum(amount) over calendar day
rules:
  - name: every_25th
    when: n % 25 == 0
  - name: big_day
    when: today > 3000 and amount > 700
"#;

/// validate + 6 fused units (window, rules, alert) + the unrouted watcher.
const UNITS: usize = 8;
const EVENTS: usize = 24_000;
/// Events per second of the steady load.
const RATE: f64 = 600.0;

fn event(i: usize) -> Bytes {
    // 500 users; times advance 20 s per event, so hourly and daily windows roll.
    let at = 1_795_132_800_000i64 + i as i64 * 20_000;
    Bytes::from(format!(
        r#"{{"user":"u{}","amount":{},"at":{at}}}"#,
        (i * 7919) % 500,
        (i * 31) % 997
    ))
}

/// Publishes events `range` in order, each acknowledged before the next (so the ingest
/// stream's order, and with it every alert id, is the same in every run), retrying a failed
/// publish with the same message id until the cluster takes it.
async fn publish(js: jetstream::Context, range: std::ops::Range<usize>, rate: Option<f64>) {
    let started = Instant::now();
    for (n, i) in range.enumerate() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        loop {
            let msg = PublishMessage::build()
                .payload(event(i))
                .message_id(format!("ev-{i}"));
            match js.send_publish("anom.spend.in", msg).await {
                Ok(ack) => match ack.await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// What a run produced.
#[derive(Debug)]
struct Outcome {
    alert_ids: Vec<String>,
    /// Per key: its final count and sum (the enrichment with the highest count).
    totals: BTreeMap<String, (i64, String)>,
    /// Per key: how often `every_25th` fired (once per 25 events, whatever their order).
    every_25th: BTreeMap<String, usize>,
    /// (key, ingest sequence) of every enriched event, in the order its fused unit processed
    /// it (by the key's count `n` at the event: the enriched stream's own order is the order
    /// its writes landed, which a failover may change without the processing having seen it).
    enriched: Vec<(String, u64)>,
    /// (key, ingest sequence) of every event the rules stage passed on to the alert stage,
    /// in the detections stream's order.
    detections: Vec<(String, u64)>,
}

/// Waits until every event is enriched and the alert count stops moving.
async fn outcome(js: &jetstream::Context) -> Outcome {
    let done = wait_for(Duration::from_secs(100), || async {
        stream_len(js, "ANOM_SPEND_ENRICHED").await >= EVENTS as u64
    })
    .await;
    if !done {
        describe(js).await;
        let mut seen = BTreeSet::new();
        for m in read_stream(js, "ANOM_SPEND_ENRICHED", None).await {
            let env = anom_pipeline::envelope::Envelope::decode(&m.payload).unwrap();
            seen.insert(env.meta.origin_seq);
        }
        let missing: Vec<u64> = (1..=EVENTS as u64).filter(|s| !seen.contains(s)).collect();
        eprintln!("ingest sequences never enriched: {missing:?}");
        let mut valid = BTreeMap::new();
        for (i, m) in read_stream(js, "ANOM_SPEND_VALID", None)
            .await
            .iter()
            .enumerate()
        {
            let env = anom_pipeline::envelope::Envelope::decode(&m.payload).unwrap();
            *valid.entry(env.meta.origin_seq).or_insert(0) += 1;
            if missing.contains(&env.meta.origin_seq) {
                eprintln!(
                    "  missing origin {} is VALID seq {} on {}",
                    env.meta.origin_seq,
                    i + 1,
                    m.subject
                );
            }
        }
        let unvalidated: Vec<u64> = (1..=EVENTS as u64)
            .filter(|s| !valid.contains_key(s))
            .collect();
        let twice: Vec<(&u64, &i32)> = valid.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!("ingest sequences never validated: {unvalidated:?}; validated twice: {twice:?}");
    }
    assert!(
        done,
        "all events enriched ({} of {EVENTS})",
        stream_len(js, "ANOM_SPEND_ENRICHED").await
    );
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stream_len(js, "ANOM_SPEND_ALERTS").await;
        if now == last {
            break;
        }
        last = now;
    }
    let mut alert_ids = Vec::new();
    let mut every_25th = BTreeMap::new();
    for m in read_stream(js, "ANOM_SPEND_ALERTS", None).await {
        let a: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        // A change of status: the alert, its status and the event behind it.
        alert_ids.push(format!(
            "{}:{}:{}",
            a["id"], a["status"], a["source"]["sequence"]
        ));
        if a["rule"] == "every_25th" && a["status"] == "firing" {
            *every_25th
                .entry(a["key"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    let mut totals: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut enriched = Vec::new();
    for m in read_stream(js, "ANOM_SPEND_ENRICHED", None).await {
        let env = anom_pipeline::envelope::Envelope::decode(&m.payload).unwrap();
        let n: i64 = env.enrichment[0].to_string().parse().unwrap();
        enriched.push((env.meta.key.clone(), n, env.meta.origin_seq));
        let total = env.enrichment[2].to_string();
        let entry = totals
            .entry(env.meta.key.clone())
            .or_insert((0, String::new()));
        if n > entry.0 {
            *entry = (n, total);
        }
    }
    // Fused, the rules hand their detections to the alert stage in-process, in the order
    // the rules saw them: no stream between them can reorder.
    let detections = Vec::new();
    Outcome {
        alert_ids,
        totals,
        every_25th,
        enriched: {
            enriched.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            enriched.into_iter().map(|(k, _, s)| (k, s)).collect()
        },
        detections,
    }
}

/// Prints every stream's and consumer's state, to tell where processing stopped.
async fn describe(js: &jetstream::Context) {
    use futures::StreamExt;
    let mut names = js.stream_names();
    while let Some(Ok(name)) = names.next().await {
        let Ok(mut stream) = js.get_stream(&name).await else {
            eprintln!("{name}: cannot get");
            continue;
        };
        match stream.info().await {
            Ok(i) => eprintln!(
                "{name}: {} messages, last seq {}, cluster {:?}",
                i.state.messages, i.state.last_sequence, i.cluster
            ),
            Err(e) => eprintln!("{name}: {e}"),
        }
        let mut consumers = stream.consumers();
        while let Some(Ok(c)) = consumers.next().await {
            eprintln!(
                "  {}: delivered {}, ack floor {}, pending {}, ack pending {}",
                c.name,
                c.delivered.stream_sequence,
                c.ack_floor.stream_sequence,
                c.num_pending,
                c.num_ack_pending
            );
        }
    }
}

/// The same events through one standalone worker on one nats-server.
async fn undisturbed() -> Outcome {
    let env = Env::start().await;
    let dir = env.pipeline_dir("spend", PIPELINE);
    let js = env.js().await;
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["worker", "--nats", &env.url(), "--pipelines"])
        .arg(&dir)
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .env("ANOM_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_SPEND_ALERTS").await.is_ok()
        })
        .await
    );
    publish(js.clone(), 0..EVENTS, None).await;
    let out = outcome(&js).await;
    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    out
}

/// The enriched stream's size over time, sampled every 250 ms.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

fn rate_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<f64> {
    let a = samples.iter().find(|(t, _)| *t >= from)?;
    let b = samples.iter().rev().find(|(t, _)| *t <= to)?;
    let secs = b.0.saturating_duration_since(a.0).as_secs_f64();
    (secs > 0.5).then(|| b.1.saturating_sub(a.1) as f64 / secs)
}

/// The 1-second processing rates from `at` until `until` (at most 15 s).
fn rates_after(samples: &[(Instant, u64)], at: Instant, until: Instant) -> Vec<f64> {
    (0..15)
        .map(|s| at + Duration::from_secs(s))
        .take_while(|from| *from + Duration::from_secs(1) <= until)
        .filter_map(|from| rate_between(samples, from, from + Duration::from_secs(1)))
        .collect()
}

struct Disruption {
    what: &'static str,
    at: Instant,
    recovered: Duration,
}

/// Waits until every unit is assigned to a live worker and running there, with `live` the
/// live workers; returns how long that took from `since`.
async fn settled(ch: &tonic::transport::Channel, live: &[&str], since: Instant) -> Duration {
    let want: Vec<String> = live.iter().map(|s| s.to_string()).collect();
    let ok = wait_for(Duration::from_secs(15), || async {
        cluster_view(ch)
            .await
            .is_some_and(|(assigned, unassigned, running, alive)| {
                assigned == UNITS && unassigned == 0 && running == UNITS && alive == want
            })
    })
    .await;
    let took = since.elapsed();
    assert!(
        ok,
        "units reassigned and running within 15 s on {live:?}: {:?}",
        cluster_view(ch).await
    );
    took
}

/// Waits until the enriched stream grows past what it held at `since` plus `by`, for up to
/// `limit`.
async fn resumed(
    js: &jetstream::Context,
    since: Instant,
    base: u64,
    by: u64,
    limit: Duration,
) -> Duration {
    let ok = wait_for(limit, || async {
        stream_len(js, "ANOM_SPEND_ENRICHED").await >= base + by
    })
    .await;
    assert!(ok, "processing resumed within {limit:?}");
    since.elapsed()
}

fn worker(nats: &str, coord: SocketAddr, id: &str, dir: &std::path::Path) -> Child {
    spawn_cluster_worker(
        nats,
        coord,
        id,
        &dir.join(id),
        &["--replicas", "3", "--snapshot-every", "2s"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_survives_joins_kills_a_nats_node_and_a_coordinator_restart_exactly() {
    let calm = undisturbed().await;
    assert!(
        calm.alert_ids.len() > 1000,
        "the rules fire: {}",
        calm.alert_ids.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut nats = Cluster::start(3, &dir.path().join("nats")).await.unwrap();
    nats.wait_ready(Duration::from_secs(60)).await.unwrap();
    let urls = nats.urls().join(",");
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(
            nats.urls()
                .iter()
                .map(|u| u.parse::<async_nats::ServerAddr>().unwrap())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let js = jetstream::new(client);

    let addr = free_addr();
    let coord_dir = dir.path().join("coordinator");
    let coord_args = ["--lease-ttl", "3s", "--replicas", "3"];
    let mut coordinator = spawn_coordinator(&urls, addr, &coord_dir, &coord_args);
    let ch = coordinator_channel(addr).await;
    let file = dir.path().join("spend.yaml");
    std::fs::write(&file, PIPELINE).unwrap();
    let apply = std::process::Command::new(env!("CARGO_BIN_EXE_anom"))
        .args(["pipeline", "apply", "-f", file.to_str().unwrap()])
        .args(["--coordinator", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let ingest = js
        .get_stream("ANOM_INGEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(ingest, 3, "streams have 3 replicas");

    let mut workers: BTreeMap<&str, Child> = BTreeMap::new();
    for id in ["w1", "w2", "w3"] {
        workers.insert(id, worker(&urls, addr, id, dir.path()));
    }
    let started = Instant::now();
    let first = settled(&ch, &["w1", "w2", "w3"], started).await;
    eprintln!(
        "3 workers: all {UNITS} units running {:.1} s after start",
        first.as_secs_f64()
    );

    let samples: Samples = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (js, samples, sampling) = (js.clone(), samples.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::Relaxed) {
                // A failed read (a server failing over) is no sample.
                if let Ok(Ok(info)) = async {
                    let mut s = js.get_stream("ANOM_SPEND_ENRICHED").await?;
                    Ok::<_, async_nats::Error>(s.info().await.map(|i| i.state.messages))
                }
                .await
                .map(|r| r.map_err(|_| ()))
                {
                    samples.lock().unwrap().push((Instant::now(), info));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    let load_started = Instant::now();
    let publisher = tokio::spawn(publish(js.clone(), 0..EVENTS, Some(RATE)));
    let mut log: Vec<Disruption> = Vec::new();

    // 1. A fourth worker joins: a share of the units moves to it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let at = Instant::now();
    workers.insert("w4", worker(&urls, addr, "w4", dir.path()));
    let took = settled(&ch, &["w1", "w2", "w3", "w4"], at).await;
    log.push(Disruption {
        what: "worker w4 joins",
        at,
        recovered: took,
    });

    // 2. w2 is SIGKILLed: its units move when its lease (3 s) runs out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = Instant::now();
    let mut w2 = workers.remove("w2").unwrap();
    w2.start_kill().unwrap();
    let _ = w2.wait().await;
    let took = settled(&ch, &["w1", "w3", "w4"], at).await;
    log.push(Disruption {
        what: "worker w2 SIGKILLed",
        at,
        recovered: took,
    });

    // 3. A NATS node is killed (and restarted 5 s later): units stay where they are; the
    // streams elect new leaders and processing goes on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = Instant::now();
    let base = stream_len(&js, "ANOM_SPEND_ENRICHED").await;
    nats.kill(2).await.unwrap();
    let took = resumed(&js, at, base, 300, Duration::from_secs(15)).await;
    log.push(Disruption {
        what: "NATS node n2 SIGKILLed",
        at,
        recovered: took,
    });
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(at.elapsed())).await;
    nats.restart(2).await.unwrap();

    // 4. The coordinator is SIGKILLed and started again on the same state: workers go on
    // with their units meanwhile, and nothing moves.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = cluster_view(&ch).await;
    let at = Instant::now();
    coordinator.start_kill().unwrap();
    let _ = coordinator.wait().await;
    let base = stream_len(&js, "ANOM_SPEND_ENRICHED").await;
    let during = resumed(&js, at, base, 300, Duration::from_secs(15)).await;
    coordinator = spawn_coordinator(&urls, addr, &coord_dir, &coord_args);
    let ch = coordinator_channel(addr).await;
    let took = settled(&ch, &["w1", "w3", "w4"], at).await;
    log.push(Disruption {
        what: "coordinator SIGKILLed and restarted",
        at,
        recovered: took,
    });
    eprintln!(
        "coordinator down: processing went on ({:.1} s to grow by 300 events); view before {before:?}",
        during.as_secs_f64()
    );

    publisher.await.unwrap();
    let load_end = Instant::now();
    let publish_secs = load_started.elapsed().as_secs_f64();
    let run = outcome(&js).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    let samples = samples.lock().unwrap().clone();
    let steady = rate_between(
        &samples,
        load_started,
        load_started + Duration::from_secs(6),
    )
    .unwrap_or(0.0);
    eprintln!(
        "load: {EVENTS} events at {RATE}/s in {publish_secs:.1} s; steady processing {steady:.0} events/s"
    );
    for (i, d) in log.iter().enumerate() {
        let until = log
            .get(i + 1)
            .map_or(load_end, |next| next.at.min(load_end));
        let rates = rates_after(&samples, d.at, until);
        let lowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let stalled = rates.iter().filter(|r| **r < steady * 0.1).count();
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        eprintln!(
            "{:<38} back to normal in {:>5.1} s; next {} s: lowest 1-s rate {:>4.0}/s, mean {:>4.0}/s, {} s below 10% of steady",
            d.what,
            d.recovered.as_secs_f64(),
            rates.len(),
            lowest,
            mean,
            stalled
        );
    }

    // Events a key saw after a later event of the same key at the rules stage (the enriched
    // events, in the order the fused units processed them).
    let reordered_in = |stream: &[(String, u64)]| {
        stream
            .iter()
            .scan(BTreeMap::<&str, u64>::new(), |newest, (key, s)| {
                let max = newest.entry(key.as_str()).or_insert(0);
                let late = *s < *max;
                *max = (*max).max(*s);
                Some(late)
            })
            .filter(|late| *late)
            .count()
    };
    let reordered = reordered_in(&run.enriched);
    let reordered_detections = reordered_in(&run.detections);
    let unique: BTreeSet<&String> = run.alert_ids.iter().collect();
    let calm_set: BTreeSet<&String> = calm.alert_ids.iter().collect();
    eprintln!(
        "alerts: {} (undisturbed run: {}), identical sets: {}; events a key saw after a later one of its own: {reordered} at the rules stage, {reordered_detections} at the alert stage",
        run.alert_ids.len(),
        calm.alert_ids.len(),
        unique == calm_set
    );
    let mut enriched: Vec<u64> = run.enriched.iter().map(|(_, s)| *s).collect();
    enriched.sort_unstable();
    assert_eq!(
        enriched,
        (1..=EVENTS as u64).collect::<Vec<_>>(),
        "every event enriched exactly once"
    );
    assert_eq!(
        unique.len(),
        run.alert_ids.len(),
        "no change published twice"
    );
    assert_eq!(run.totals.len(), 500);
    assert_eq!(
        run.totals, calm.totals,
        "each key's final count and sum equal the undisturbed run's"
    );
    assert_eq!(
        run.every_25th, calm.every_25th,
        "every_25th fired as often per key as in the undisturbed run"
    );
    if reordered == 0 && reordered_detections == 0 {
        assert_eq!(unique, calm_set, "in order, the very same alerts");
    }

    for (_, mut w) in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    let _ = coordinator.start_kill();
}
