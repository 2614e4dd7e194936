//! A partition's events reach its fused unit in ingest order even when some of validate's
//! publishes are refused for a while and accepted later — what a NATS failover does to the
//! publishes caught in it. Here the refusals are made on purpose: the valid stream takes at
//! most 60 messages per subject (new ones refused) until the test lifts the limit 2 s later.
//! Without chaining (`anom_runtime::Ordered`) the refused outputs of one partition would be
//! stored after later ones of the same partition that were sent once the limit was gone.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{alerts, read_stream, spawn_worker, stream_len, wait_for, Env};
use anom_pipeline::envelope::Envelope;
use async_nats::jetstream::stream::DiscardPolicy;

const PIPELINE: &str = r#"
name: order
key: k
partitions: 2
units:
  ordered: true
schema:
  k: string
  i: int
aggregates:
  last_i: prev(i)
rules:
  # Fires when a key sees an event after a later one of its own.
  - name: backwards
    when: i < last_i
"#;

const KEYS: usize = 10;
const EVENTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_for_a_while_are_stored_in_the_order_validate_made_them() {
    let env = Env::start().await;
    let dir = env.pipeline_dir("order", PIPELINE);
    let js = env.js().await;
    let _worker = spawn_worker(&env.url(), &dir);
    assert!(
        wait_for(Duration::from_secs(30), || async {
            js.get_stream("ANOM_ORDER_VALID").await.is_ok()
                && js.get_stream("ANOM_ORDER_ALERTS").await.is_ok()
        })
        .await
    );
    let mut valid = js.get_stream("ANOM_ORDER_VALID").await.unwrap();
    let open = valid.info().await.unwrap().config.clone();
    js.update_stream(async_nats::jetstream::stream::Config {
        max_messages_per_subject: 60,
        discard: DiscardPolicy::New,
        discard_new_per_subject: true,
        ..open.clone()
    })
    .await
    .unwrap();

    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
                let mut acks = Vec::new();
                for i in chunk {
                    let body = format!(r#"{{"k":"k{}","i":{i}}}"#, i % KEYS);
                    acks.push(js.publish("anom.order.in", body.into()).await.unwrap());
                }
                for a in acks {
                    a.await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Refused from when a partition's subject is full, for 2 s.
    assert!(
        wait_for(Duration::from_secs(30), || async {
            stream_len(&js, "ANOM_ORDER_VALID").await >= 60
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    js.update_stream(open).await.unwrap();
    publisher.await.unwrap();
    assert!(
        wait_for(Duration::from_secs(120), || async {
            stream_len(&js, "ANOM_ORDER_VALID").await == EVENTS as u64
        })
        .await,
        "every event validated once: {}",
        stream_len(&js, "ANOM_ORDER_VALID").await
    );

    // Per partition, the valid stream holds the events in ingest order.
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    let mut out_of_order = 0;
    for m in read_stream(&js, "ANOM_ORDER_VALID", None).await {
        let env = Envelope::decode(&m.payload).unwrap();
        let last = newest.entry(m.subject.clone()).or_insert(0);
        if env.meta.origin_seq < *last {
            out_of_order += 1;
        }
        *last = (*last).max(env.meta.origin_seq);
    }
    assert_eq!(
        out_of_order, 0,
        "events stored after a later one of their partition"
    );
    // And so no key saw its events backwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let backwards: Vec<_> = alerts(&js, "ANOM_ORDER_ALERTS")
        .await
        .into_iter()
        .filter(|a| a["rule"] == "backwards")
        .collect();
    assert!(backwards.is_empty(), "{backwards:?}");
}
