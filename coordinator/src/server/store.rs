//! The coordinator's own durable state, in sled: pipeline versions, workers, unit owners and
//! the epoch counter. Written on every change, read once at start, so a restarted coordinator
//! carries on with the same assignment (and the same epochs) instead of reshuffling.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("coordinator state: {0}")]
    Sled(#[from] sled::Error),
    #[error("coordinator state: a record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One stored version of a pipeline definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    pub version: u32,
    pub yaml: String,
    pub applied_at_ms: i64,
    pub comment: String,
    pub author: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineRecord {
    pub name: String,
    pub versions: Vec<VersionRecord>,
    pub paused: bool,
    pub deleted: bool,
    pub updated_at_ms: i64,
}

impl PipelineRecord {
    pub fn current(&self) -> &VersionRecord {
        self.versions
            .last()
            .expect("a pipeline has at least one version")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerRecord {
    pub id: String,
    pub roles: Vec<String>,
    pub capacity: u32,
    pub metrics_addr: String,
    pub hostname: String,
    pub registered_at_ms: i64,
}

/// Who owns a unit, at which epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnerRecord {
    pub pipeline: String,
    pub stage: String,
    pub sink: String,
    pub partition: u32,
    pub worker: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub epoch: u64,
    pub generation: u64,
}

/// Everything stored, as loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub pipelines: BTreeMap<String, PipelineRecord>,
    pub workers: BTreeMap<String, WorkerRecord>,
    pub owners: Vec<OwnerRecord>,
    pub counters: Counters,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pipelines: sled::Tree,
    workers: sled::Tree,
    owners: sled::Tree,
}

const COUNTERS: &[u8] = b"counters";

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::open(dir)?;
        Ok(Store {
            pipelines: db.open_tree("pipelines")?,
            workers: db.open_tree("workers")?,
            owners: db.open_tree("owners")?,
            db,
        })
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
            tree.iter()
                .values()
                .map(|v| Ok(serde_json::from_slice(&v?)?))
                .collect()
        }
        let counters = match self.db.get(COUNTERS)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Counters::default(),
        };
        Ok(Loaded {
            pipelines: all::<PipelineRecord>(&self.pipelines)?
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            workers: all::<WorkerRecord>(&self.workers)?
                .into_iter()
                .map(|w| (w.id.clone(), w))
                .collect(),
            owners: all(&self.owners)?,
            counters,
        })
    }

    pub async fn put_pipeline(&self, p: &PipelineRecord) -> Result<(), StoreError> {
        self.pipelines
            .insert(p.name.as_bytes(), serde_json::to_vec(p)?)?;
        self.flush().await
    }

    pub async fn put_worker(&self, w: &WorkerRecord) -> Result<(), StoreError> {
        self.workers
            .insert(w.id.as_bytes(), serde_json::to_vec(w)?)?;
        self.flush().await
    }

    pub async fn remove_worker(&self, id: &str) -> Result<(), StoreError> {
        self.workers.remove(id.as_bytes())?;
        self.flush().await
    }

    /// Replaces the owner table and the counters in one go.
    pub async fn put_owners(
        &self,
        owners: &[(String, OwnerRecord)],
        counters: &Counters,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.owners.iter().keys() {
            batch.remove(k?);
        }
        for (key, o) in owners {
            batch.insert(key.as_bytes(), serde_json::to_vec(o)?);
        }
        self.owners.apply_batch(batch)?;
        self.db.insert(COUNTERS, serde_json::to_vec(counters)?)?;
        self.flush().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Blocking flush off the async threads (sled 0.34's flush_async can deadlock).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Sled(sled::Error::ReportableBug(e.to_string())))??;
        Ok(())
    }
}
