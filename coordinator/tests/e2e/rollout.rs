//! Rollouts lose nothing: a new version applied while the old one's envelopes are in flight
//! reads them by name (docs/architecture.md, "Rollouts"). Four pipelines, one per change: a
//! threshold, an added field, a removed field, a new aggregate (the last with a unit per
//! stage, so envelopes carrying aggregates cross the version too).
//!
//! Per card: 50 events validated by version 1 while no worker runs the keyed units, then
//! version 2, 50 more (validated by it), then the keyed units start — at version 2, with a
//! backlog of version 1's envelopes first. Then a burst of 50 more with version 3 applied
//! 0.2 s after it began, with everything running. Every event must count once: `n == 100`
//! and `n == 150` fire once per card, `n > 150` never, and nothing is dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{
    alerts, coordinator_channel, free_addr, publish_events, read_stream, spawn_cluster_worker,
    spawn_coordinator, stream_len, wait_for, Env,
};
use anom_pipeline::envelope::Envelope;
use anom_proto::v1;
use anom_proto::v1::pipelines_client::PipelinesClient;

const CARDS: usize = 30;
/// Events per card in each of the three bursts.
const PER_BURST: usize = 50;

fn v1(name: &str, units: &str) -> String {
    format!(
        r#"name: {name}
key: card
partitions: 2
schema:
  card: string
  amount: int
  country: string
aggregates:
  n: count()
rules:
  - name: hundredth
    when: n == 100
  - name: last
    when: n == 150
  - name: over
    when: n > 150
  - name: big
    when: amount > 990
{units}"#
    )
}

struct Change {
    name: &'static str,
    versions: [String; 3],
}

/// The four changes, each with its three versions (the third changes a threshold again).
fn changes() -> Vec<Change> {
    let third = |v2: String| v2.replace("amount > ", "amount > 1");
    let change = |name: &'static str, units: &str, second: &dyn Fn(String) -> String| {
        let first = v1(name, units);
        let v2 = second(first.clone());
        Change {
            name,
            versions: [first, v2.clone(), third(v2)],
        }
    };
    vec![
        change("roll_threshold", "", &|v| {
            v.replace("amount > 990", "amount > 995")
        }),
        change("roll_added", "", &|v| {
            v.replace(
                "  country: string\n",
                "  country: string\n  channel: {type: string, default: web}\n",
            )
        }),
        change("roll_removed", "", &|v| {
            v.replace("  country: string\n", "")
        }),
        change("roll_aggregate", "units:\n  fused: false\n", &|v| {
            v.replace("  n: count()\n", "  n: count()\n  total: sum(amount)\n")
        }),
    ]
}

fn definition(yaml: &str, name: &str) -> Option<v1::Definition> {
    Some(v1::Definition {
        source: Some(v1::definition::Source::Yaml(yaml.to_string())),
        source_name: format!("{name}.yaml"),
    })
}

fn burst(seed: usize) -> Vec<serde_json::Value> {
    // Cards interleaved, so every partition has a backlog of every card.
    (0..CARDS * PER_BURST)
        .map(|i| {
            serde_json::json!({
                "card": format!("card-{}", i % CARDS),
                "amount": (i * 7 + seed) % 1000,
                "country": "FR",
            })
        })
        .collect()
}

async fn apply(api: &mut PipelinesClient<tonic::transport::Channel>, c: &Change, v: usize) {
    let r = api
        .apply(v1::ApplyRequest {
            definition: definition(&c.versions[v], c.name),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed, "{}", c.name);
}

/// Whether every assigned unit of `pipeline` whose stage is `stage` runs `version`.
async fn runs(ch: &tonic::transport::Channel, pipeline: &str, stage: &str, version: u32) -> bool {
    let mut c = v1::cluster_client::ClusterClient::new(ch.clone());
    let a = c
        .list_assignments(v1::ListAssignmentsRequest {
            pipeline: pipeline.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let units: Vec<_> = a
        .units
        .iter()
        .filter(|u| u.stage == stage && !u.worker_id.is_empty())
        .collect();
    !units.is_empty()
        && units
            .iter()
            .all(|u| u.version == version && u.running_version == version)
}

async fn firings(js: &async_nats::jetstream::Context, name: &str, rule: &str) -> usize {
    alerts(js, &format!("ANOM_{}_ALERTS", name.to_uppercase()))
        .await
        .iter()
        .filter(|a| a["rule"] == rule && a["status"] == "firing")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_applied_under_a_backlog_dead_letter_nothing_and_count_every_event_once() {
    let env = Env::start().await;
    let js = env.js().await;
    let addr = free_addr();
    let _coordinator = spawn_coordinator(
        &env.url(),
        addr,
        &env.dir.path().join("coordinator"),
        &["--lease-ttl", "3s"],
    );
    let ch = coordinator_channel(addr).await;
    let mut api = PipelinesClient::new(ch.clone());
    let changes = changes();
    for c in &changes {
        apply(&mut api, c, 0).await;
    }
    // Validation only, for now.
    let _front = spawn_cluster_worker(
        &env.url(),
        addr,
        "front",
        &env.dir.path().join("front"),
        &["--roles", "validate"],
    );
    let ready = wait_for(Duration::from_secs(60), || async {
        let mut all = true;
        for c in &changes {
            all &= runs(&ch, c.name, "validate", 1).await;
        }
        all
    })
    .await;
    assert!(ready, "{:?}", crate::support::cluster_view(&ch).await);

    // Burst 1, validated by version 1; version 2; burst 2, validated by version 2.
    let valid = |name: &str| format!("ANOM_{}_VALID", name.to_uppercase());
    for (i, c) in changes.iter().enumerate() {
        publish_events(&js, &format!("anom.{}.in", c.name), &burst(i)).await;
    }
    for c in &changes {
        let validated = wait_for(Duration::from_secs(60), || async {
            stream_len(&js, &valid(c.name)).await == (CARDS * PER_BURST) as u64
        })
        .await;
        assert!(validated, "{}", c.name);
        apply(&mut api, c, 1).await;
    }
    for c in &changes {
        assert!(
            wait_for(Duration::from_secs(60), || runs(&ch, c.name, "validate", 2)).await,
            "{}",
            c.name
        );
        publish_events(&js, &format!("anom.{}.in", c.name), &burst(7)).await;
    }
    // The valid streams now hold envelopes of versions 1 and 2, none read yet.
    for c in &changes {
        assert!(
            wait_for(Duration::from_secs(60), || async {
                stream_len(&js, &valid(c.name)).await == (2 * CARDS * PER_BURST) as u64
            })
            .await,
            "{}",
            c.name
        );
        let versions: BTreeSet<String> = read_stream(&js, &valid(c.name), None)
            .await
            .iter()
            .filter_map(|m| Envelope::decode(&m.payload).ok())
            .map(|e| e.meta.version)
            .collect();
        let digests: BTreeSet<String> = c.versions[..2]
            .iter()
            .map(|y| anom_pipeline::Pipeline::from_yaml(y).unwrap().version)
            .collect();
        assert_eq!(versions, digests, "{}", c.name);
    }

    // The keyed units start at version 2 on their backlog.
    let _back = spawn_cluster_worker(
        &env.url(),
        addr,
        "back",
        &env.dir.path().join("back"),
        &[
            "--roles",
            "keyed,window,score,rules,alert",
            "--snapshot-every",
            "1s",
        ],
    );
    for c in &changes {
        let fired = wait_for(Duration::from_secs(120), || async {
            firings(&js, c.name, "hundredth").await >= CARDS
        })
        .await;
        assert!(
            fired,
            "{}: {} of {CARDS} cards reached 100",
            c.name,
            firings(&js, c.name, "hundredth").await
        );
    }

    // Burst 3 with version 3 applied 0.2 s after it began, everything running.
    let publishing: Vec<_> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let js = js.clone();
            let subject = format!("anom.{}.in", c.name);
            tokio::spawn(async move { publish_events(&js, &subject, &burst(20 + i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in &changes {
        apply(&mut api, c, 2).await;
    }
    for p in publishing {
        p.await.unwrap();
    }
    for c in &changes {
        let fired = wait_for(Duration::from_secs(120), || async {
            firings(&js, c.name, "last").await >= CARDS
        })
        .await;
        assert!(
            fired,
            "{}: {} of {CARDS} cards reached 150",
            c.name,
            firings(&js, c.name, "last").await
        );
    }
    // Let anything that would be a duplicate arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in &changes {
        let name = c.name;
        let records = alerts(&js, &format!("ANOM_{}_ALERTS", name.to_uppercase())).await;
        for rule in ["hundredth", "last"] {
            let mut per_card: BTreeMap<String, usize> = BTreeMap::new();
            for a in records
                .iter()
                .filter(|a| a["rule"] == rule && a["status"] == "firing")
            {
                *per_card
                    .entry(a["key"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            assert_eq!(per_card.len(), CARDS, "{name} {rule}: {per_card:?}");
            assert!(
                per_card.values().all(|n| *n == 1),
                "{name} {rule}: {per_card:?}"
            );
        }
        let mut seen = BTreeSet::new();
        for a in &records {
            assert_ne!(a["rule"], "over", "{name}: an event counted twice: {a}");
            let change = (
                a["id"].to_string(),
                a["status"].to_string(),
                a["version"].to_string(),
            );
            assert!(seen.insert(change), "{name}: published twice: {a}");
        }
        let dead = read_stream(&js, "ANOM_DLQ", Some(&format!("anom.{name}.dlq"))).await;
        assert!(
            dead.is_empty(),
            "{name}: {} dead letters, the first: {:?}",
            dead.len(),
            dead.first().map(|d| &d.headers)
        );
    }
}
