//! Reading streams back and publishing test events.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;

/// Publishes JSON events to `subject` and waits until JetStream has stored every one.
pub async fn publish_events(js: &jetstream::Context, subject: &str, events: &[serde_json::Value]) {
    // Acks awaited per 1,000: the client blocks a publish while 5,000 wait unawaited.
    for chunk in events.chunks(1_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push(
                js.publish(subject.to_string(), bytes::Bytes::from(e.to_string()))
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
    }
}

/// A stored message as read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub headers: HashMap<String, String>,
}

/// Every message currently in `stream` (optionally only `subject`), in order.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: Option<&str>,
) -> Vec<Stored> {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.unwrap_or_default().to_string(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    let mut pending = consumer
        .clone()
        .info()
        .await
        .map(|i| i.num_pending)
        .unwrap_or(0);
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            let headers = m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                v.first()
                                    .map(|v| v.as_str().to_string())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Stored {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                headers,
            });
        }
        if got == 0 {
            break;
        }
        pending = pending.saturating_sub(got);
    }
    out
}

/// Every alert record (JSON) in `stream`; none if the stream does not exist yet.
pub async fn alerts(js: &jetstream::Context, stream: &str) -> Vec<serde_json::Value> {
    match js.get_stream(stream).await {
        Ok(_) => read_stream(js, stream, None)
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// How many messages `stream` holds (0 if it cannot be read now).
pub async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}
