//! Fencing: who owns a unit of work, and whether this process still does.
//!
//! The coordinator records every unit's owner and epoch in the JetStream KV bucket
//! [`OWNERS_BUCKET`] *before* telling workers about it. Each worker watches that bucket
//! ([`Owners`]) and gives every unit it runs a [`Fence`]; the runtime checks the fence before
//! opening a consumer, publishing a batch, committing state and acking. A worker that lost a
//! unit (its lease expired while it was paused or cut off from the coordinator) therefore stops
//! as soon as the new owner's record reaches it, without needing the coordinator to be up.
//!
//! The record lives in NATS, next to the data: a worker that cannot see it cannot publish
//! either. What slips through the short gap before the record arrives is harmless: outputs
//! carry deterministic ids (the duplicate window drops them), consumers are named by epoch (a
//! stale ack cannot reach the new owner's consumer) and state snapshots carry their epoch
//! (an older epoch never overwrites a newer one, see [`crate::snapshot`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The KV bucket of unit owners: key = unit id, value = JSON [`Owner`].
pub const OWNERS_BUCKET: &str = "anom_owners";

/// Who owns a unit, and since which epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub worker: String,
    pub epoch: u64,
}

impl Owner {
    /// What a deleted record reads as: the unit was removed (its pipeline deleted or paused),
    /// so no one may hold it, and a fence asked for it fails at once instead of waiting for a
    /// record that will not come. A new record for the unit (a later epoch) replaces it.
    pub fn removed() -> Owner {
        Owner {
            worker: String::new(),
            epoch: u64::MAX,
        }
    }
}

/// Creates (or opens) the owners bucket.
pub async fn owners_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    match js.get_key_value(OWNERS_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: OWNERS_BUCKET.to_string(),
                description: "owner and epoch of every unit of work (fencing)".into(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?),
    }
}

/// Whether this process may still act for one unit. `Fence::open()` always may (a worker
/// without a coordinator owns everything it runs).
#[derive(Clone, Debug)]
pub struct Fence {
    held: Option<Held>,
}

#[derive(Clone, Debug)]
struct Held {
    unit: String,
    mine: Owner,
    current: watch::Receiver<Owner>,
}

impl Fence {
    /// No fencing: the single-worker mode.
    pub fn open() -> Fence {
        Fence { held: None }
    }

    /// The epoch this process holds the unit at, if fenced.
    pub fn epoch(&self) -> Option<u64> {
        self.held.as_ref().map(|h| h.mine.epoch)
    }

    /// True while the owner record still names this worker at this epoch.
    pub fn holds(&self) -> bool {
        match &self.held {
            None => true,
            Some(h) => *h.current.borrow() == h.mine,
        }
    }

    /// The unit this fence guards, for logs.
    pub fn unit(&self) -> &str {
        self.held.as_ref().map_or("", |h| h.unit.as_str())
    }

    /// Resolves once the fence no longer holds (never, for an open fence).
    pub async fn lost(&self) {
        match &self.held {
            None => std::future::pending().await,
            Some(h) => {
                let mut rx = h.current.clone();
                let mine = h.mine.clone();
                let _ = rx.wait_for(|o| *o != mine).await;
            }
        }
    }
}

/// The owner records as this worker last saw them, kept current by a KV watch.
#[derive(Clone)]
pub struct Owners {
    worker: String,
    records: Arc<Mutex<HashMap<String, watch::Sender<Owner>>>>,
}

impl Owners {
    /// Starts watching the bucket; runs until `shutdown`.
    pub async fn watch(
        js: &jetstream::Context,
        worker: &str,
        replicas: usize,
        shutdown: CancellationToken,
    ) -> Result<Owners, async_nats::Error> {
        let bucket = owners_bucket(js, replicas).await?;
        let owners = Owners {
            worker: worker.to_string(),
            records: Arc::new(Mutex::new(HashMap::new())),
        };
        let records = owners.records.clone();
        tokio::spawn(async move {
            let mut revision = 0u64;
            while !shutdown.is_cancelled() {
                let watch = if revision == 0 {
                    bucket.watch_with_history(">").await
                } else {
                    bucket.watch_all_from_revision(revision + 1).await
                };
                let mut watch = match watch {
                    Ok(w) => w,
                    Err(e) => {
                        warn!(error = %e, "cannot watch unit owners; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        e = watch.next() => e,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    revision = revision.max(entry.revision);
                    let owner = match entry.operation {
                        kv::Operation::Put => {
                            serde_json::from_slice::<Owner>(&entry.value).unwrap_or_default()
                        }
                        kv::Operation::Delete | kv::Operation::Purge => Owner::removed(),
                    };
                    let mut map = records.lock().expect("owners lock");
                    match map.get(&entry.key) {
                        Some(tx) => {
                            tx.send_replace(owner);
                        }
                        None => {
                            map.insert(entry.key, watch::channel(owner).0);
                        }
                    }
                }
            }
        });
        Ok(owners)
    }

    /// A fence for `unit` held at `epoch`; waits up to `wait` for the owner record to name
    /// this worker at that epoch (the coordinator writes it before assigning, but the watch
    /// may lag). `None` if it does not: someone else owns the unit now.
    pub async fn fence(&self, unit: &str, epoch: u64, wait: Duration) -> Option<Fence> {
        let mine = Owner {
            worker: self.worker.clone(),
            epoch,
        };
        let mut rx = {
            let mut map = self.records.lock().expect("owners lock");
            map.entry(unit.to_string())
                .or_insert_with(|| watch::channel(Owner::default()).0)
                .subscribe()
        };
        // A later epoch (or a removed record, `Owner::removed`) ends the wait at once.
        let ok = tokio::time::timeout(wait, rx.wait_for(|o| *o == mine || o.epoch > epoch))
            .await
            .ok()
            .and_then(|r| r.ok())
            .is_some_and(|o| *o == mine);
        ok.then(|| Fence {
            held: Some(Held {
                unit: unit.to_string(),
                mine,
                current: rx,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_fence_always_holds_and_a_held_one_only_while_the_record_names_it() {
        assert!(Fence::open().holds());
        let (tx, rx) = watch::channel(Owner {
            worker: "w1".into(),
            epoch: 3,
        });
        let fence = Fence {
            held: Some(Held {
                unit: "p.window.0".into(),
                mine: Owner {
                    worker: "w1".into(),
                    epoch: 3,
                },
                current: rx,
            }),
        };
        assert!(fence.holds());
        tx.send_replace(Owner {
            worker: "w2".into(),
            epoch: 4,
        });
        assert!(!fence.holds());
        assert_eq!(fence.epoch(), Some(3));
    }

    #[tokio::test]
    async fn a_fence_for_a_removed_unit_fails_at_once_and_a_new_record_replaces_the_removal() {
        use futures::FutureExt;
        let owners = Owners {
            worker: "w1".into(),
            records: Arc::new(Mutex::new(HashMap::new())),
        };
        let removed = watch::channel(Owner::removed()).0;
        owners
            .records
            .lock()
            .unwrap()
            .insert("p.validate.0".into(), removed.clone());
        // Waiting would mean an agent stuck for the whole wait on every unit of a deleted
        // pipeline (a stale plan retried), blind to the assignment that removed them.
        let fence = owners
            .fence("p.validate.0", 2, Duration::from_secs(3600))
            .now_or_never();
        assert!(matches!(fence, Some(None)), "the fence waited");
        removed.send_replace(Owner {
            worker: "w1".into(),
            epoch: 9,
        });
        let fence = owners
            .fence("p.validate.0", 9, Duration::from_secs(3600))
            .now_or_never();
        assert!(matches!(fence, Some(Some(_))));
    }
}
