//! Snapshots of keyed state in a JetStream object store, so a partition's state moves with
//! the partition to another worker on another machine.
//!
//! A worker's sled database is its fast local checkpoint; every `state.snapshot_interval` (and
//! when it lets a unit go) the stage's whole tree is written to the object store bucket
//! [`STATE_BUCKET`] under the tree's name, with the source sequence it reflects and the
//! writer's epoch in the object's metadata. Whoever starts the unit next takes the newer of
//! its local tree and the snapshot (by sequence) and replays the inputs after it; replayed
//! outputs carry the same ids as the first time and are dropped as duplicates, which is why
//! the interval must stay well inside the streams' duplicate window.
//!
//! Every (state, sequence) pair that was ever committed is a valid restart point, so a late
//! write by a stale owner cannot corrupt anything; it is still refused when the stored
//! snapshot has a newer epoch, so the newest owner's snapshot wins.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncReadExt;

use crate::checkpoint::{CheckpointError, StateImage, StateStore};

/// The object store bucket of state snapshots.
pub const STATE_BUCKET: &str = "anom_state";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("state snapshot bucket: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("state snapshot {name}: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("state snapshot {name} has epoch {stored}, newer than ours ({ours}): not overwritten")]
    Fenced {
        name: String,
        stored: u64,
        ours: u64,
    },
}

/// What a snapshot's metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub seq: u64,
    pub epoch: u64,
}

/// What one save wrote.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub seq: u64,
    pub bytes: usize,
    pub duration: Duration,
}

#[derive(Clone)]
pub struct Snapshots {
    bucket: object_store::ObjectStore,
    worker: String,
}

impl Snapshots {
    /// Opens (or creates) the bucket.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        worker: &str,
    ) -> Result<Snapshots, SnapshotError> {
        let bucket = match js.get_object_store(STATE_BUCKET).await {
            Ok(b) => b,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: STATE_BUCKET.to_string(),
                    description: Some(
                        "keyed state snapshots, one object per stage partition".into(),
                    ),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| SnapshotError::Nats(e.into()))?,
        };
        Ok(Snapshots {
            bucket,
            worker: worker.to_string(),
        })
    }

    /// The stored snapshot's sequence and epoch, if there is one.
    pub async fn info(&self, name: &str) -> Result<Option<SnapshotInfo>, SnapshotError> {
        match self.bucket.info(name).await {
            Ok(info) => Ok(Some(parse_info(name, &info.metadata)?)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::Nats(e.into())),
        }
    }

    /// Uploads `image` as the snapshot of `name`, unless the stored one has a newer epoch.
    pub async fn save(
        &self,
        name: &str,
        epoch: u64,
        image: &StateImage,
    ) -> Result<Saved, SnapshotError> {
        let started = Instant::now();
        if let Some(stored) = self.info(name).await? {
            if stored.epoch > epoch {
                return Err(SnapshotError::Fenced {
                    name: name.to_string(),
                    stored: stored.epoch,
                    ours: epoch,
                });
            }
        }
        let bytes = image.encode();
        let metadata = HashMap::from([
            ("seq".to_string(), image.seq.to_string()),
            ("epoch".to_string(), epoch.to_string()),
            ("worker".to_string(), self.worker.clone()),
        ]);
        let meta = object_store::ObjectMetadata {
            name: name.to_string(),
            description: Some(format!(
                "state of {name} as of source sequence {}",
                image.seq
            )),
            chunk_size: Some(1024 * 1024),
            metadata,
            headers: None,
        };
        let len = bytes.len();
        self.bucket
            .put(meta, &mut bytes.as_slice())
            .await
            .map_err(|e| SnapshotError::Nats(e.into()))?;
        Ok(Saved {
            seq: image.seq,
            bytes: len,
            duration: started.elapsed(),
        })
    }

    /// Replaces the local tree with the stored snapshot when the snapshot is further along.
    /// Returns the sequence restored from the snapshot, or `None` when the local tree was
    /// kept.
    pub async fn restore_if_newer(
        &self,
        name: &str,
        store: &StateStore,
    ) -> Result<Option<u64>, SnapshotError> {
        let Some(info) = self.info(name).await? else {
            return Ok(None);
        };
        if info.seq <= store.last_seq()? {
            return Ok(None);
        }
        let mut object = self
            .bucket
            .get(name)
            .await
            .map_err(|e| SnapshotError::Nats(e.into()))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| SnapshotError::Corrupt {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        let image = StateImage::decode(&bytes).map_err(|reason| SnapshotError::Corrupt {
            name: name.to_string(),
            reason,
        })?;
        let seq = image.seq;
        store.replace(image).await?;
        Ok(Some(seq))
    }
}

fn parse_info(name: &str, meta: &HashMap<String, String>) -> Result<SnapshotInfo, SnapshotError> {
    let field = |k: &str| {
        meta.get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| SnapshotError::Corrupt {
                name: name.to_string(),
                reason: format!("metadata `{k}` missing or not a number"),
            })
    };
    Ok(SnapshotInfo {
        seq: field("seq")?,
        epoch: field("epoch")?,
    })
}
