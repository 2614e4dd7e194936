//! Spreading units of work over live workers: sticky, proportional to capacity, role-aware.
//!
//! Pure and deterministic (same inputs, same answer), so it is tested on its own and the
//! coordinator can recompute it after a restart without moving anything.

use std::collections::{BTreeMap, HashMap};

use anom_pipeline::unit::UnitId;

/// A live worker as the spreading sees it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub id: String,
    /// Roles it accepts; empty means every role.
    pub roles: Vec<String>,
    pub capacity: u32,
}

impl Slot {
    fn accepts(&self, unit: &UnitId) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == unit.stage.role())
    }
}

/// Owner of every unit that some live worker can run. A unit stays with its current owner
/// while that owner is alive, able to run it and within its fair share (total units ×
/// its capacity ÷ total capacity, rounded down); the others go, one at a time, to the able
/// worker with the lowest load per capacity (ties: the current owner, then the smaller id).
pub fn spread(
    units: &[UnitId],
    workers: &[Slot],
    current: &BTreeMap<UnitId, String>,
) -> BTreeMap<UnitId, String> {
    let mut out = BTreeMap::new();
    if workers.is_empty() {
        return out;
    }
    let total_capacity: u64 = workers.iter().map(|w| w.capacity.max(1) as u64).sum();
    let n = units.len() as u64;
    let quota: HashMap<&str, u64> = workers
        .iter()
        .map(|w| {
            let share = n * w.capacity.max(1) as u64 / total_capacity;
            (w.id.as_str(), share)
        })
        .collect();
    let by_id: HashMap<&str, &Slot> = workers.iter().map(|w| (w.id.as_str(), w)).collect();
    let mut load: HashMap<&str, u64> = workers.iter().map(|w| (w.id.as_str(), 0)).collect();
    let mut sorted: Vec<&UnitId> = units.iter().collect();
    sorted.sort();
    let mut homeless = Vec::new();
    for unit in sorted {
        let keep = current.get(unit).and_then(|owner| {
            let slot = by_id.get(owner.as_str())?;
            (slot.accepts(unit) && load[owner.as_str()] < quota[owner.as_str()])
                .then_some(slot.id.as_str())
        });
        match keep {
            Some(owner) => {
                *load.get_mut(owner).expect("live worker") += 1;
                out.insert(unit.clone(), owner.to_string());
            }
            None => homeless.push(unit),
        }
    }
    for unit in homeless {
        let owner = current.get(unit);
        let best = workers.iter().filter(|w| w.accepts(unit)).min_by(|a, b| {
            let la = (load[a.id.as_str()] + 1) * b.capacity.max(1) as u64;
            let lb = (load[b.id.as_str()] + 1) * a.capacity.max(1) as u64;
            la.cmp(&lb)
                .then_with(|| (Some(&b.id) == owner).cmp(&(Some(&a.id) == owner)))
                .then_with(|| a.id.cmp(&b.id))
        });
        if let Some(w) = best {
            *load.get_mut(w.id.as_str()).expect("live worker") += 1;
            out.insert(unit.clone(), w.id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anom_pipeline::unit::UnitStage;

    fn units(partitions: u32) -> Vec<UnitId> {
        let mut v = vec![UnitId {
            pipeline: "p".into(),
            stage: UnitStage::Validate,
            partition: 0,
        }];
        for k in 0..partitions {
            for stage in [UnitStage::Window, UnitStage::Rules, UnitStage::Alert] {
                v.push(UnitId {
                    pipeline: "p".into(),
                    stage,
                    partition: k,
                });
            }
        }
        v
    }

    fn slot(id: &str, capacity: u32) -> Slot {
        Slot {
            id: id.into(),
            roles: vec![],
            capacity,
        }
    }

    fn loads(a: &BTreeMap<UnitId, String>) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for w in a.values() {
            *m.entry(w.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn spreads_evenly_and_moves_only_what_it_must_when_a_worker_joins_or_leaves() {
        let u = units(8); // 25 units
        let a = spread(&u, &[slot("w1", 1), slot("w2", 1)], &BTreeMap::new());
        assert_eq!(a.len(), 25);
        let l = loads(&a);
        assert!(l.values().all(|&n| n == 12 || n == 13), "{l:?}");
        // Same inputs, same answer, nothing moves.
        assert_eq!(spread(&u, &[slot("w1", 1), slot("w2", 1)], &a), a);
        // A third worker: it takes about a third; nothing moves between w1 and w2.
        let b = spread(&u, &[slot("w1", 1), slot("w2", 1), slot("w3", 1)], &a);
        let l = loads(&b);
        assert!(l.values().all(|&n| (8..=9).contains(&n)), "{l:?}");
        for (unit, w) in &b {
            if w != "w3" {
                assert_eq!(&a[unit], w, "{unit} moved between surviving workers");
            }
        }
        // w1 leaves: only its units move.
        let c = spread(&u, &[slot("w2", 1), slot("w3", 1)], &b);
        assert_eq!(c.len(), 25);
        for (unit, w) in &b {
            if w != "w1" {
                assert_eq!(&c[unit], w);
            }
        }
    }

    #[test]
    fn capacity_weights_the_spread_and_roles_restrict_it() {
        let u = units(8);
        let a = spread(&u, &[slot("big", 3), slot("small", 1)], &BTreeMap::new());
        let l = loads(&a);
        assert!(l["big"] >= 18 && l["small"] <= 7, "{l:?}");
        let only_windows = Slot {
            id: "w".into(),
            roles: vec!["window".into()],
            capacity: 1,
        };
        let a = spread(&u, &[only_windows], &BTreeMap::new());
        assert_eq!(a.len(), 8, "only the window units have a worker");
        assert!(a.keys().all(|k| k.stage == UnitStage::Window));
        assert!(spread(&u, &[], &BTreeMap::new()).is_empty());
    }
}
