//! Durable per-partition state in sled.
//!
//! Each stateful consumer (pipeline, stage, partition) owns one sled tree holding its state
//! entries and, under a reserved key, the source sequence that state reflects. A checkpoint
//! writes the entries changed since the previous one and the new sequence in one atomic
//! batch, then flushes: after a crash the tree holds the state as of exactly one sequence,
//! never a mix.

use std::time::{Duration, Instant};

/// The reserved key of the last applied source sequence; entry keys are prefixed so they
/// can never collide with it.
const SEQ_KEY: &[u8] = b"\x00seq";
const ENTRY_PREFIX: u8 = b'k';

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store: a checkpoint task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Opens the sled database of a worker's keyed state, tuned for checkpoints: large batches
/// of small writes, flushed explicitly.
pub fn open_db(dir: &std::path::Path) -> Result<sled::Db, CheckpointError> {
    Ok(sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(256 * 1024 * 1024)
        // Checkpoints flush themselves; no background flusher is needed.
        .flush_every_ms(None)
        .open()?)
}

/// State entries changed since the last checkpoint.
#[derive(Debug, Default)]
pub struct StateDelta {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
    /// How many keys the stage holds in all, for metrics.
    pub keys: usize,
}

impl StateDelta {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// What one checkpoint wrote.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub entries: usize,
    pub bytes: usize,
    pub duration: Duration,
}

#[derive(Clone)]
pub struct StateStore {
    tree: sled::Tree,
}

impl StateStore {
    /// Opens (or creates) the tree of one consumer.
    pub fn open(db: &sled::Db, consumer: &str) -> Result<StateStore, CheckpointError> {
        Ok(StateStore {
            tree: db.open_tree(consumer)?,
        })
    }

    /// The source sequence the stored state reflects (0: nothing yet).
    pub fn last_seq(&self) -> Result<u64, CheckpointError> {
        Ok(self
            .tree
            .get(SEQ_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Every stored entry, as (key, value).
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), CheckpointError>> + '_ {
        self.tree.scan_prefix([ENTRY_PREFIX]).map(|r| {
            r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                .map_err(CheckpointError::from)
        })
    }

    /// Writes `delta` and `seq` atomically and makes them durable.
    pub async fn commit(&self, delta: StateDelta, seq: u64) -> Result<Committed, CheckpointError> {
        let started = Instant::now();
        let tree = self.tree.clone();
        let (entries, bytes) =
            tokio::task::spawn_blocking(move || -> Result<(usize, usize), CheckpointError> {
                let mut batch = sled::Batch::default();
                let mut bytes = 0;
                let entries = delta.puts.len() + delta.deletes.len();
                for (k, v) in delta.puts {
                    bytes += k.len() + v.len() + 1;
                    batch.insert(prefixed(&k), v);
                }
                for k in delta.deletes {
                    batch.remove(prefixed(&k));
                }
                batch.insert(SEQ_KEY, &seq.to_be_bytes());
                tree.apply_batch(batch)?;
                // A blocking flush on this blocking thread: sled 0.34's `flush_async` can
                // deadlock when several are in flight at once (spacejam/sled#1241, #1308); it
                // hung a worker whose partitions checkpointed together.
                tree.flush()?;
                Ok((entries, bytes))
            })
            .await??;
        Ok(Committed {
            entries,
            bytes,
            duration: started.elapsed(),
        })
    }
}

fn prefixed(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(ENTRY_PREFIX);
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_stores_entries_and_sequence_together_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let store = StateStore::open(&db, "p-window-0").unwrap();
            assert_eq!(store.last_seq().unwrap(), 0);
            let delta = StateDelta {
                puts: vec![
                    (b"a".to_vec(), b"1".to_vec()),
                    (b"b".to_vec(), b"2".to_vec()),
                ],
                deletes: vec![],
                keys: 2,
            };
            let c = store.commit(delta, 41).await.unwrap();
            assert_eq!(c.entries, 2);
            let delta = StateDelta {
                puts: vec![(b"a".to_vec(), b"3".to_vec())],
                deletes: vec![b"b".to_vec()],
                keys: 1,
            };
            store.commit(delta, 57).await.unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let store = StateStore::open(&db, "p-window-0").unwrap();
        assert_eq!(store.last_seq().unwrap(), 57);
        let entries: Vec<_> = store.entries().map(|e| e.unwrap()).collect();
        assert_eq!(entries, vec![(b"a".to_vec(), b"3".to_vec())]);
        // Another consumer's tree is separate.
        assert_eq!(
            StateStore::open(&db, "p-window-1")
                .unwrap()
                .last_seq()
                .unwrap(),
            0
        );
    }
}
