//! The raw one-hop JetStream baseline, written with plain async-nats.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

#[derive(Debug, Clone)]
pub struct Baseline {
    pub messages: usize,
    pub size: usize,
    pub seconds: f64,
}

impl Baseline {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

/// Producer → stream A → (pull, republish with Nats-Msg-Id, await acks, ack) → stream B,
/// timed from the first publish until B holds every message.
pub async fn hop(url: &str, n: usize, size: usize) -> anyhow::Result<Baseline> {
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 17)
        .connect(url)
        .await?;
    let js = jetstream::new(client);
    for (name, subject) in [("HOP_A", "hop.a"), ("HOP_B", "hop.b")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await?;
    }
    let consumer = js
        .get_stream("HOP_A")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("hop".into()),
            ack_policy: AckPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let operator = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(1000)
                .messages()
                .await?;
            let mut moved = 0usize;
            while moved < n {
                let Some(first) = messages.next().await else {
                    break;
                };
                let mut batch = vec![first?];
                while batch.len() < 500 {
                    match messages.next().now_or_never() {
                        Some(Some(m)) => batch.push(m?),
                        _ => break,
                    }
                }
                let mut acks = Vec::with_capacity(batch.len());
                for m in &batch {
                    let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let publish = async_nats::jetstream::message::PublishMessage::build()
                        .payload(m.payload.clone())
                        .message_id(format!("hop:{seq}"));
                    acks.push(js.send_publish("hop.b", publish).await?);
                }
                for a in acks {
                    a.await?;
                }
                if let Some(last) = batch.last() {
                    last.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                moved += batch.len();
            }
            anyhow::Ok(())
        })
    };
    let payload = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    for _ in 0..n {
        acks.push_back(js.publish("hop.a", payload.clone()).await?);
        // Below the client's 5,000 acks in flight, or publish waits on acks never awaited.
        if acks.len() >= 4_000 {
            if let Some(a) = acks.pop_front() {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    let mut b = js.get_stream("HOP_B").await?;
    while b.info().await?.state.messages < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    operator.await??;
    Ok(Baseline {
        messages: n,
        size,
        seconds,
    })
}
