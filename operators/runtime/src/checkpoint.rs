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
/// The reserved key of the output streams' marks at that sequence (see [`crate::replay`]).
const MARKS_KEY: &[u8] = b"\x00marks";
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

    /// The same changes, under `section` (see [`StateStore::section`]).
    pub fn within(mut self, section: &[u8]) -> StateDelta {
        if !section.is_empty() {
            let prefix = |k: &mut Vec<u8>| {
                k.splice(0..0, section.iter().copied());
            };
            self.puts.iter_mut().for_each(|(k, _)| prefix(k));
            self.deletes.iter_mut().for_each(prefix);
        }
        self
    }

    /// Adds `other`'s changes to these (the stages of a fused unit, each in its section).
    pub fn merge(&mut self, other: StateDelta) {
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
        self.keys += other.keys;
    }

    /// The delta of a stage that keeps one state per event key in memory (entries
    /// `KEY_PREFIX + key`) and one record for the partition (`META_KEY`): the states of the
    /// keys changed since the last checkpoint, the record, and the evicted keys' deletions.
    /// Drains `dirty` and `evicted`.
    pub fn of_keys<S: serde::Serialize, M: serde::Serialize>(
        states: &std::collections::HashMap<String, S>,
        dirty: &mut std::collections::HashSet<String>,
        evicted: &mut Vec<String>,
        meta: &M,
    ) -> StateDelta {
        let entry = |key: &str| [KEY_PREFIX, key.as_bytes()].concat();
        let mut puts = Vec::with_capacity(dirty.len() + 1);
        for key in dirty.drain() {
            if let Some(state) = states.get(&key) {
                puts.push((entry(&key), rmp_serde::to_vec(state).unwrap_or_default()));
            }
        }
        puts.push((
            META_KEY.to_vec(),
            rmp_serde::to_vec(meta).unwrap_or_default(),
        ));
        StateDelta {
            puts,
            deletes: evicted.drain(..).map(|key| entry(&key)).collect(),
            keys: states.len(),
        }
    }
}

/// Entries of a keyed stage (see [`StateDelta::of_keys`]): one per event key, under this
/// prefix, and the partition's own record.
pub const KEY_PREFIX: &[u8] = b"k:";
pub const META_KEY: &[u8] = b"m";

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
    /// Prefix of this view's entries within the tree: each stage of a fused unit reads its
    /// own section of the unit's one tree (see [`StateStore::section`]).
    section: Vec<u8>,
}

impl StateStore {
    /// Opens (or creates) the tree of one consumer.
    pub fn open(db: &sled::Db, consumer: &str) -> Result<StateStore, CheckpointError> {
        Ok(StateStore {
            tree: db.open_tree(consumer)?,
            section: Vec::new(),
        })
    }

    /// The entries under `section` of the same tree, read without the prefix; it shares
    /// the tree's sequence. A fused unit's stages restore from their sections, and the unit
    /// commits their deltas together, each [`StateDelta::within`] its section.
    pub fn section(&self, section: &[u8]) -> StateStore {
        StateStore {
            tree: self.tree.clone(),
            section: [self.section.as_slice(), section].concat(),
        }
    }

    /// Whether the tree holds nothing yet (no entry, no sequence).
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
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
        let skip = 1 + self.section.len();
        self.tree
            .scan_prefix([&[ENTRY_PREFIX], self.section.as_slice()].concat())
            .map(move |r| {
                r.map(|(k, v)| (k[skip..].to_vec(), v.to_vec()))
                    .map_err(CheckpointError::from)
            })
    }

    /// The output marks committed with the sequence, if any (see [`crate::replay`]).
    pub fn marks(&self) -> Result<Option<crate::replay::Marks>, CheckpointError> {
        Ok(self
            .tree
            .get(MARKS_KEY)?
            .and_then(|v| crate::replay::Marks::decode(&v)))
    }

    /// Writes the output marks alone (a stream a unit writes to for the first time), durably.
    pub async fn save_marks(&self, marks: Vec<u8>) -> Result<(), CheckpointError> {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || -> Result<(), CheckpointError> {
            tree.insert(MARKS_KEY, marks)?;
            tree.flush()?;
            Ok(())
        })
        .await?
    }

    /// Writes `delta` and `seq` atomically and makes them durable.
    pub async fn commit(&self, delta: StateDelta, seq: u64) -> Result<Committed, CheckpointError> {
        self.commit_marked(delta, seq, None).await
    }

    /// As [`StateStore::commit`], with the output streams' marks at `seq`, in the same batch.
    pub async fn commit_marked(
        &self,
        delta: StateDelta,
        seq: u64,
        marks: Option<Vec<u8>>,
    ) -> Result<Committed, CheckpointError> {
        let started = Instant::now();
        let tree = self.tree.clone();
        let delta = delta.within(&self.section);
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
                if let Some(marks) = marks {
                    batch.insert(MARKS_KEY, marks);
                }
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

/// A whole tree at one source sequence: what a snapshot holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StateImage {
    pub seq: u64,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Format tag of an encoded image; bump when the layout changes.
const IMAGE_MAGIC: &[u8; 8] = b"anomst01";

impl StateImage {
    /// `magic, seq, count, (key len, key, value len, value)*`, integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(24 + size);
        out.extend_from_slice(IMAGE_MAGIC);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_be_bytes());
        for (k, v) in &self.entries {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<StateImage, String> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if bytes.len() < n {
                return Err(format!(
                    "truncated: wanted {n} more bytes, {} left",
                    bytes.len()
                ));
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head)
        }
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
        if take(&mut bytes, 8)? != IMAGE_MAGIC {
            return Err("not a state image (bad magic)".into());
        }
        let seq = u64_of(take(&mut bytes, 8)?);
        let count = u64_of(take(&mut bytes, 8)?) as usize;
        let mut entries = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let kl = u32_of(take(&mut bytes, 4)?);
            let k = take(&mut bytes, kl)?.to_vec();
            let vl = u32_of(take(&mut bytes, 4)?);
            let v = take(&mut bytes, vl)?.to_vec();
            entries.push((k, v));
        }
        if !bytes.is_empty() {
            return Err(format!("{} trailing bytes", bytes.len()));
        }
        Ok(StateImage { seq, entries })
    }
}

impl StateStore {
    /// The whole tree and its sequence. Blocking: call it where nothing commits meanwhile
    /// (the runtime's confirmer, right after a commit).
    pub fn export(&self) -> Result<StateImage, CheckpointError> {
        let entries = self.entries().collect::<Result<Vec<_>, _>>()?;
        Ok(StateImage {
            seq: self.last_seq()?,
            entries,
        })
    }

    /// Fills this tree with the entries of `parts` (each under its section) at `seq`, durably
    /// and at once. Blocking: for a one-time migration before a unit starts.
    pub fn adopt(&self, parts: &[(&[u8], StateStore)], seq: u64) -> Result<(), CheckpointError> {
        let mut batch = sled::Batch::default();
        for (section, from) in parts {
            for entry in from.entries() {
                let (k, v) = entry?;
                batch.insert(
                    prefixed(&[self.section.as_slice(), section, &k].concat()),
                    v,
                );
            }
        }
        batch.insert(SEQ_KEY, &seq.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Replaces the whole tree with `image`, durably.
    pub async fn replace(&self, image: StateImage) -> Result<(), CheckpointError> {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || -> Result<(), CheckpointError> {
            let mut batch = sled::Batch::default();
            for k in tree.iter().keys() {
                batch.remove(k?);
            }
            for (k, v) in image.entries {
                batch.insert(prefixed(&k), v);
            }
            batch.insert(SEQ_KEY, &image.seq.to_be_bytes());
            tree.apply_batch(batch)?;
            tree.flush()?;
            Ok(())
        })
        .await?
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

    async fn reopen(dir: &std::path::Path) -> sled::Db {
        for _ in 0..100 {
            match open_db(dir) {
                Ok(db) => return db,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        open_db(dir).unwrap()
    }

    #[tokio::test]
    async fn a_commit_stores_entries_and_sequence_together_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
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
        // sled's threads may hold the file lock for a moment after the handle is dropped
        // (seen once on a loaded machine: "could not acquire lock"); a worker restarting
        // is a new process, so wait for the lock here rather than fail.
        let db = reopen(dir.path()).await;
        let store = StateStore::open(&db, "p-window-0").unwrap();
        assert_eq!(store.last_seq().unwrap(), 57);
        let entries: Vec<_> = store.entries().map(|e| e.unwrap()).collect();
        assert_eq!(entries, vec![(b"a".to_vec(), b"3".to_vec())]);
        // A snapshot round trip: export, encode, decode, replace elsewhere.
        let image = store.export().unwrap();
        assert_eq!(image.seq, 57);
        let decoded = StateImage::decode(&image.encode()).unwrap();
        assert_eq!(decoded, image);
        assert!(StateImage::decode(&image.encode()[..20]).is_err());
        let other = StateStore::open(&db, "p-window-9").unwrap();
        other
            .commit(
                StateDelta {
                    puts: vec![(b"zzz".to_vec(), b"old".to_vec())],
                    deletes: vec![],
                    keys: 1,
                },
                3,
            )
            .await
            .unwrap();
        other.replace(decoded).await.unwrap();
        assert_eq!(other.export().unwrap(), image);
        // Sections of one tree: each reads only its own entries, all share the sequence.
        let fused = StateStore::open(&db, "p-keyed-0").unwrap();
        let mut delta = StateDelta {
            puts: vec![(b"a".to_vec(), b"w".to_vec())],
            deletes: vec![],
            keys: 1,
        }
        .within(b"w");
        delta.merge(
            StateDelta {
                puts: vec![(b"a".to_vec(), b"s".to_vec())],
                deletes: vec![],
                keys: 1,
            }
            .within(b"s"),
        );
        fused.commit(delta, 9).await.unwrap();
        let window: Vec<_> = fused.section(b"w").entries().map(|e| e.unwrap()).collect();
        assert_eq!(window, vec![(b"a".to_vec(), b"w".to_vec())]);
        assert_eq!(fused.section(b"s").last_seq().unwrap(), 9);
        assert_eq!(fused.entries().count(), 2);
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
