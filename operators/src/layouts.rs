//! The layouts of every pipeline version that ran, in a JetStream KV bucket (`ANOM_LAYOUTS`,
//! key `<pipeline>.<version>`): what lets a unit of a new version read the envelopes an older
//! one left in flight (see [`anom_pipeline::layout`]).
//!
//! A worker writes a version's layout before it starts any unit of that version, so a layout
//! is in the bucket before the first envelope that needs it exists. A unit loads its
//! pipeline's layouts before it starts; a version it meets later (a validate unit elsewhere
//! switched first) is fetched then, once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tracing::warn;

use anom_pipeline::layout::{Layout, LayoutSource, Layouts};
use anom_pipeline::Pipeline;

pub const LAYOUTS_BUCKET: &str = "ANOM_LAYOUTS";

#[derive(Debug, thiserror::Error)]
#[error("layouts bucket `{LAYOUTS_BUCKET}`: {0}")]
pub struct LayoutsError(#[source] async_nats::Error);

/// The bucket, and what this process has read from and written to it.
pub struct LayoutStore {
    kv: kv::Store,
    known: Mutex<HashMap<String, Layout>>,
    written: Mutex<HashSet<String>>,
}

impl LayoutStore {
    /// Opens the bucket, creating it when missing. Layouts are small and kept for as long
    /// as the streams keep envelopes (a day by default): a week, one value per key.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<Arc<LayoutStore>, LayoutsError> {
        let mut last = None;
        // Right after a server (or cluster) starts, JetStream may refuse for a moment.
        for attempt in 0..60u64 {
            if let Ok(kv) = js.get_key_value(LAYOUTS_BUCKET).await {
                return Ok(Arc::new(LayoutStore::with(kv)));
            }
            match js
                .create_key_value(kv::Config {
                    bucket: LAYOUTS_BUCKET.to_string(),
                    description: "what each pipeline version's envelopes hold, by name".into(),
                    history: 1,
                    max_age: Duration::from_secs(7 * 86_400),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => return Ok(Arc::new(LayoutStore::with(kv))),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt.min(10) + 1))).await;
        }
        Err(LayoutsError(
            last.map(Into::into).unwrap_or_else(|| "not created".into()),
        ))
    }

    fn with(kv: kv::Store) -> LayoutStore {
        LayoutStore {
            kv,
            known: Mutex::new(HashMap::new()),
            written: Mutex::new(HashSet::new()),
        }
    }

    /// Writes `pipeline`'s layout (once per version per process).
    pub async fn publish(&self, pipeline: &Pipeline) -> Result<(), LayoutsError> {
        let key = Layout::key_of(&pipeline.name, &pipeline.version);
        if self.written.lock().expect("not poisoned").contains(&key) {
            return Ok(());
        }
        let layout = Layout::of(pipeline);
        self.kv
            .put(&key, layout.encode().into())
            .await
            .map_err(|e| LayoutsError(e.into()))?;
        self.known
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), layout);
        self.written.lock().expect("not poisoned").insert(key);
        Ok(())
    }

    /// Reads every layout of `pipeline` the bucket holds into this process's view.
    pub async fn load(&self, pipeline: &str) -> Result<(), LayoutsError> {
        let prefix = format!("{pipeline}.");
        let mut keys = self.kv.keys().await.map_err(|e| LayoutsError(e.into()))?;
        let mut wanted = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| LayoutsError(e.into()))?;
            if key.starts_with(&prefix)
                && !self.known.lock().expect("not poisoned").contains_key(&key)
            {
                wanted.push(key);
            }
        }
        for key in wanted {
            self.fetch(&key).await?;
        }
        Ok(())
    }

    async fn fetch(&self, key: &str) -> Result<Option<Layout>, LayoutsError> {
        let Some(bytes) = self.kv.get(key).await.map_err(|e| LayoutsError(e.into()))? else {
            return Ok(None);
        };
        let Some(layout) = Layout::decode(&bytes) else {
            warn!(key, "a stored layout does not decode; ignored");
            return Ok(None);
        };
        self.known
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), layout.clone());
        Ok(Some(layout))
    }

    /// The handle stages read through.
    pub fn layouts(self: &Arc<Self>) -> Layouts {
        Layouts::new(self.clone())
    }
}

impl LayoutSource for LayoutStore {
    fn layout(&self, pipeline: &str, version: &str) -> Option<Layout> {
        let key = Layout::key_of(pipeline, version);
        if let Some(l) = self.known.lock().expect("not poisoned").get(&key) {
            return Some(l.clone());
        }
        // A version that appeared after the unit started. Stages are synchronous; this is
        // the one place they wait on the network, once per such version, and only where the
        // runtime has threads to spare for it.
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        tokio::task::block_in_place(|| handle.block_on(self.fetch(&key))).unwrap_or_else(|e| {
            warn!(key, error = %e, "cannot read a layout");
            None
        })
    }
}
