//! Where alert state lives: three JetStream key-value buckets shared by every worker and the
//! coordinator, so it survives restarts and is the same wherever it is read.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `ANOM_ALERTS` | `<pipeline>.<alert id>` | the [`Alert`] record, its current state |
//! | `ANOM_SILENCES` | `<pipeline>.<silence id>` | a [`Silence`](super::silence::Silence) |
//! | `ANOM_NFLOG` | `<pipeline>.<sink>.<group hash>` | what a group last sent a sink ([`super::nflog`]) |
//!
//! Only a pipeline's alert stage writes `ANOM_ALERTS` (through its outputs, so a write is
//! published before its input is acked). Users change alerts by sending a [`Command`] to
//! that stage's input subject, never by writing the bucket.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::alerting::record::Alert;
use anom_pipeline::Pipeline;

pub const ALERTS_BUCKET: &str = "ANOM_ALERTS";
pub const SILENCES_BUCKET: &str = "ANOM_SILENCES";
pub const NFLOG_BUCKET: &str = "ANOM_NFLOG";

/// Header marking a message on `anom.<p>.detections.<k>` as a [`Command`], not an envelope.
pub const COMMAND_HEADER: &str = "Anom-Command";

/// Values kept per alert in `ANOM_ALERTS`. The alert stage's writes are confirmed in order
/// per batch, but a write whose publish had to be retried can land after the next batch's:
/// the bucket's last value may then be an older state. Readers take the highest `version`
/// among the last few values instead of trusting the last one.
pub const ALERT_HISTORY: i64 = 8;

/// How long resolved alerts and notification records are kept.
pub const RETENTION: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert store `{bucket}`: {source}")]
    Nats {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("alert store `{bucket}`: record `{key}` is not valid JSON: {source}")]
    Decode {
        bucket: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn nats(bucket: &'static str) -> impl Fn(async_nats::Error) -> StoreError {
    move |source| StoreError::Nats { bucket, source }
}

/// The three buckets, opened (and created when missing).
#[derive(Clone)]
pub struct Buckets {
    pub alerts: kv::Store,
    pub silences: kv::Store,
    pub nflog: kv::Store,
}

impl Buckets {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Buckets, StoreError> {
        Ok(Buckets {
            // A few values per alert: see `load_alerts`.
            alerts: bucket(
                js,
                ALERTS_BUCKET,
                "current state of every alert",
                RETENTION,
                ALERT_HISTORY,
                replicas,
            )
            .await?,
            silences: bucket(js, SILENCES_BUCKET, "silences", Duration::ZERO, 1, replicas).await?,
            nflog: bucket(
                js,
                NFLOG_BUCKET,
                "what each alert group last sent each sink",
                RETENTION,
                1,
                replicas,
            )
            .await?,
        })
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    description: &str,
    max_age: Duration,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    // Right after a server (or cluster) starts, JetStream may refuse for a moment: retry.
    let mut last = None;
    for attempt in 0..60u64 {
        if let Ok(store) = js.get_key_value(name).await {
            return Ok(store);
        }
        match js
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                description: description.to_string(),
                history,
                max_age,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
        {
            Ok(store) => return Ok(store),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt.min(10) + 1))).await;
    }
    Err(StoreError::Nats {
        bucket: name,
        source: last
            .map(Into::into)
            .unwrap_or_else(|| "unknown error".into()),
    })
}

/// The bucket key of an alert.
pub fn alert_key(pipeline: &str, id: &str) -> String {
    format!("{pipeline}.{id}")
}

/// The subject a write to `bucket`'s `key` is published on (what `kv::Store::put` does).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Every record under `<prefix>.` in a bucket, decoded, in key order.
pub async fn load_all<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    bucket: &'static str,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    scan(store, bucket, prefix)
        .await?
        .into_iter()
        .filter(|(_, bytes)| !bytes.is_empty())
        .map(|(key, bytes)| decode(bucket, &key, &bytes))
        .collect()
}

/// Every live record under `<prefix>.` in a bucket, as (key, value), sorted by key: one pass
/// over the bucket's stream (its latest message per key) instead of a request per key,
/// which took seconds for thousands of alerts. A snapshot: values written meanwhile may or
/// may not be in it.
pub async fn scan(
    store: &kv::Store,
    bucket: &'static str,
    prefix: &str,
) -> Result<Vec<(String, bytes::Bytes)>, StoreError> {
    let mut out = scan_with(store, bucket, prefix, DeliverPolicy::LastPerSubject).await?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every alert of `pipeline`, each at the highest version among the values the bucket keeps
/// for it (see [`ALERT_HISTORY`]), sorted by id.
pub async fn load_alerts(store: &kv::Store, pipeline: &str) -> Result<Vec<Alert>, StoreError> {
    let mut newest: std::collections::BTreeMap<String, Alert> = Default::default();
    for (key, value) in scan_with(store, ALERTS_BUCKET, pipeline, DeliverPolicy::All).await? {
        if value.is_empty() {
            newest.remove(&key); // deleted: what came before is gone
            continue;
        }
        let alert: Alert = decode(ALERTS_BUCKET, &key, &value)?;
        if newest.get(&key).is_none_or(|a| a.version <= alert.version) {
            newest.insert(key, alert);
        }
    }
    Ok(newest.into_values().collect())
}

/// The bucket's values under `<prefix>.` in stream order, as (key, value); a deleted or
/// purged key's marker comes as an empty value.
async fn scan_with(
    store: &kv::Store,
    bucket: &'static str,
    prefix: &str,
    deliver_policy: DeliverPolicy,
) -> Result<Vec<(String, bytes::Bytes)>, StoreError> {
    let err = nats(bucket);
    let subjects = kv_subject(bucket, "");
    let consumer = store
        .stream
        .create_consumer(pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: format!("{subjects}{prefix}.>"),
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::with_capacity(pending);
    let mut seen = 0;
    while seen < pending {
        let mut batch = consumer
            .fetch()
            .max_messages((pending - seen).min(10_000))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| err(e.into()))?;
        let before = seen;
        while let Some(m) = batch.next().await {
            let m = m.map_err(&err)?;
            seen += 1;
            // Deleted and purged keys leave a marker as their latest message.
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if let Some(key) = m.subject.strip_prefix(&subjects) {
                let value = if deleted {
                    bytes::Bytes::new()
                } else {
                    m.payload.clone()
                };
                out.push((key.to_string(), value));
            }
        }
        if seen == before {
            break;
        }
    }
    let name = consumer.cached_info().name.clone();
    // It would go by itself after inactive_threshold; frequent callers should leave none.
    let _ = store.stream.delete_consumer(&name).await;
    Ok(out)
}

pub fn decode<T: serde::de::DeserializeOwned>(
    bucket: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        bucket,
        key: key.to_string(),
        source,
    })
}

/// One alert, by pipeline and id.
pub async fn get_alert(
    store: &kv::Store,
    pipeline: &str,
    id: &str,
) -> Result<Option<Alert>, StoreError> {
    let key = alert_key(pipeline, id);
    match store
        .get(&key)
        .await
        .map_err(|e| nats(ALERTS_BUCKET)(e.into()))?
    {
        Some(bytes) => Ok(Some(decode(ALERTS_BUCKET, &key, &bytes)?)),
        None => Ok(None),
    }
}

/// A user's change to one alert, carried to the alert stage that owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The alert's id.
    pub alert: String,
    pub action: Action,
    /// Who asked.
    pub by: String,
    #[serde(default)]
    pub comment: String,
    /// Unique per request: the message id, so a retried request is applied once.
    pub request: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Acknowledge,
    Resolve,
}

/// Sends `command` for `alert` (of `pipeline`) to the alert stage of its key's partition.
/// It takes effect when that stage reads it (at once when the pipeline runs).
pub async fn send_command(
    js: &jetstream::Context,
    pipeline: &Pipeline,
    key: &str,
    command: &Command,
) -> Result<(), StoreError> {
    let partition = crate::stage::validate::partition_of(key, pipeline.partitions);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(COMMAND_HEADER, "1");
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        command.request.as_str(),
    );
    let payload = serde_json::to_vec(command).expect("commands serialize");
    let err = nats(ALERTS_BUCKET);
    let topology = anom_pipeline::topology::Topology::of(pipeline);
    js.publish_with_headers(
        topology.command_subject(partition).to_string(),
        headers,
        payload.into(),
    )
    .await
    .map_err(|e| err(e.into()))?
    .await
    .map_err(|e| err(e.into()))?;
    Ok(())
}
