//! A replicated (R3) stream on a 3-node JetStream cluster keeps every message exactly once
//! while the node holding the stream leader — and the publisher's connection — is SIGKILLed,
//! publishing goes on through the other nodes, and the node comes back and catches up.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anom_testkit::cluster::Cluster;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::StreamExt;

const STREAM: &str = "CLUSTER_TEST";
const SUBJECT: &str = "cluster.test";
const PER_PHASE: usize = 1000;

fn msg_id(i: usize) -> String {
    format!("m-{i}")
}

/// Publishes messages `ids` with their `Nats-Msg-Id`, retrying those whose publish or ack
/// fails (no leader, a dead connection) until each one is acknowledged. After a failure
/// one message probes until the stream takes messages again, then the rest follow.
/// Returns how many publishes failed, how many acks said "duplicate", and the last error.
async fn publish_all(
    js: &jetstream::Context,
    ids: std::ops::Range<usize>,
    limit: Duration,
) -> (usize, usize, String) {
    let started = Instant::now();
    let mut pending: Vec<usize> = ids.collect();
    let (mut failures, mut duplicates) = (0, 0);
    let mut last_error = String::new();
    let mut probing = false;
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "{} messages still unacknowledged after {limit:?}; last error: {last_error}",
            pending.len()
        );
        let round = if probing { 1 } else { pending.len() };
        let mut acks = Vec::with_capacity(round);
        let mut failed = Vec::new();
        for &i in &pending[..round] {
            let publish = PublishMessage::build()
                .message_id(msg_id(i))
                .payload(i.to_string().into());
            match js.send_publish(SUBJECT, publish).await {
                Ok(ack) => acks.push((i, ack)),
                Err(e) => {
                    last_error = e.to_string();
                    failed.push(i);
                }
            }
        }
        for (i, ack) in acks {
            match ack.await {
                Ok(ack) => duplicates += usize::from(ack.duplicate),
                Err(e) => {
                    last_error = e.to_string();
                    failed.push(i);
                }
            }
        }
        probing = !failed.is_empty();
        if probing {
            failures += failed.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        failed.extend_from_slice(&pending[round..]);
        pending = failed;
    }
    (failures, duplicates, last_error)
}

/// Retries `f` until it succeeds, for JetStream API calls made while leaders settle.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if started.elapsed() < limit => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e} (still failing after {limit:?})"),
        }
    }
}

/// The message count the node's own replica of the stream reports on its `/jsz`.
async fn replica_messages(cluster: &Cluster, i: usize) -> Option<u64> {
    let url = format!("{}/jsz?accounts=true&streams=true", cluster.monitor_url(i));
    let jsz: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(url)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == STREAM)?["state"]["messages"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_keeps_every_message_exactly_once_across_a_node_kill_and_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(3, dir.path()).await.unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    eprintln!("cluster ready after {:?}", started.elapsed());

    let admin = async_nats::connect(cluster.urls()).await.unwrap();
    let admin_js = jetstream::new(admin);
    retry("create the R3 stream", Duration::from_secs(20), || {
        admin_js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            num_replicas: 3,
            ..Default::default()
        })
    })
    .await;
    let leader = retry(
        "read the stream leader",
        Duration::from_secs(20),
        || async {
            let mut stream = admin_js
                .get_stream(STREAM)
                .await
                .map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            info.cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .ok_or_else(|| "the stream has no leader yet".to_string())
        },
    )
    .await;
    let victim = cluster.index_of(&leader).expect("the leader is a node");

    // The publisher knows every node but connects to the stream leader's first, so killing
    // that node takes both the stream leader and the publisher's connection away.
    let mut urls = cluster.urls();
    urls.swap(0, victim);
    let publisher = async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connect(urls)
        .await
        .unwrap();
    assert_eq!(publisher.server_info().server_name, leader);
    let mut js = jetstream::new(publisher.clone());
    js.set_timeout(Duration::from_secs(2));

    let (failures, duplicates, _) = publish_all(&js, 0..PER_PHASE, Duration::from_secs(20)).await;
    eprintln!(
        "first {PER_PHASE} published after {:?} ({failures} failed publishes, {duplicates} duplicate acks)",
        started.elapsed()
    );

    cluster.kill(victim).await.unwrap();
    eprintln!("killed {leader} (stream leader, publisher's server)");
    let (failures, duplicates, last_error) =
        publish_all(&js, PER_PHASE..2 * PER_PHASE, Duration::from_secs(30)).await;
    let now_on = publisher.server_info().server_name;
    eprintln!(
        "next {PER_PHASE} published through {now_on} after {:?} ({failures} failed publishes, {duplicates} duplicate acks; last error: {last_error})",
        started.elapsed()
    );
    assert_ne!(now_on, leader, "the publisher reconnected to a live node");
    // The new stream leader has the replicated duplicate window: sending earlier messages
    // again (as a publisher retrying a lost ack would) stores nothing.
    let (_, duplicates, _) = publish_all(&js, 0..100, Duration::from_secs(10)).await;
    assert_eq!(
        duplicates, 100,
        "re-sent messages are recognised as duplicates"
    );

    cluster.restart(victim).await.unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "{leader} restarted, cluster ready after {:?}",
        started.elapsed()
    );

    // The stream holds each message once: no gap, no duplicate stored by a retry.
    let mut stream = retry("get the stream", Duration::from_secs(10), || {
        admin_js.get_stream(STREAM)
    })
    .await;
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 2 * PER_PHASE as u64);
    assert_eq!(state.first_sequence, 1);
    assert_eq!(state.last_sequence, 2 * PER_PHASE as u64);

    // Read it all back with a consumer and check the ids.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 * PER_PHASE {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} messages read back", ids.len()))
            .expect("the consumer's message stream ended")
            .unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .expect("every message has its Nats-Msg-Id")
            .as_str()
            .to_string();
        assert_eq!(message.payload, &id.as_bytes()[2..], "payload of {id}");
        ids.push(id);
    }
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let expected: Vec<String> = (0..2 * PER_PHASE).map(msg_id).collect();
    assert_eq!(distinct.len(), ids.len(), "a message was read twice");
    assert_eq!(distinct, expected.iter().collect::<BTreeSet<_>>());

    // The restarted node's own replica caught up with all of them.
    let caught_up = Instant::now();
    loop {
        let n = replica_messages(&cluster, victim).await;
        if n == Some(2 * PER_PHASE as u64) {
            break;
        }
        assert!(
            caught_up.elapsed() < Duration::from_secs(15),
            "{leader}'s replica holds {n:?} messages"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("done after {:?}", started.elapsed());
}

#[tokio::test]
async fn cluster_urls_name_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(2, dir.path()).await.unwrap();
    assert_eq!(cluster.len(), 2);
    let urls = cluster.urls();
    assert_eq!(cluster.url(), urls.join(","));
    assert!(urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")));
    assert_eq!(cluster.index_of("n1"), Some(1));
    cluster.kill(0).await.unwrap();
    assert!(!cluster.is_running(0));
    assert!(cluster.is_running(1));
    // A plain client reaches whichever node is still up.
    let client = async_nats::connect(urls).await.unwrap();
    assert_eq!(client.server_info().server_name, "n1");
    cluster.restart(0).await.unwrap();
    assert!(cluster.is_running(0));
}
