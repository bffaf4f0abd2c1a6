//! The queue of runnable work: by platform, then priority, with weighted fair share between
//! requesters.
//!
//! Pick order for an agent: among the queued items whose platform the agent satisfies, the
//! lowest priority value first (REAPI: lower runs sooner); among equal priorities, the
//! requester that has received the least service so far (virtual time, advanced by
//! `1 / weight` per lease); then first come, first served. A requester that becomes active
//! starts at the current minimum virtual time, so idle time does not bank credit and a
//! newcomer cannot starve the others either.

use std::collections::{BTreeSet, HashMap};

use super::platform::Platform;

/// One queued item: the id of its operation.
pub type ItemId = String;

/// One requester's part of the queue, as status pages show it (see [`FairQueue::shares`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RequesterShare {
    /// The requester (fair-share key).
    pub requester: String,
    /// Its queued items, over every platform.
    pub queued: usize,
    /// Service received so far, divided by weight.
    pub vtime: f64,
    /// Its share weight.
    pub weight: f64,
    /// The item it queued first of those still queued (the one that has waited longest).
    pub oldest: ItemId,
}

#[derive(Debug, Default)]
struct Requester {
    /// (priority, sequence, id) in order.
    items: BTreeSet<(i32, u64, ItemId)>,
    /// Virtual time: service received, divided by weight.
    vtime: f64,
    weight: f64,
}

/// The queue. Not thread-safe: owned by the scheduler actor.
#[derive(Debug, Default)]
pub struct FairQueue {
    /// platform → requester → items.
    groups: HashMap<Platform, HashMap<String, Requester>>,
    /// Where each item sits, for removal.
    index: HashMap<ItemId, (Platform, String, i32, u64)>,
    seq: u64,
    /// Virtual time per requester, kept while it is idle so it can be restored.
    vtimes: HashMap<String, f64>,
}

impl FairQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `id` is queued.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn min_active_vtime(&self) -> Option<f64> {
        self.groups
            .values()
            .flat_map(|g| g.values())
            .filter(|r| !r.items.is_empty())
            .map(|r| r.vtime)
            .min_by(f64::total_cmp)
    }

    fn requester_active(&self, name: &str) -> bool {
        self.groups
            .values()
            .any(|g| g.get(name).is_some_and(|r| !r.items.is_empty()))
    }

    /// Queues `id` needing `platform`, for `requester` at `priority`.
    pub fn push(&mut self, id: ItemId, platform: Platform, requester: &str, priority: i32) {
        if self.index.contains_key(&id) {
            return;
        }
        let start_vtime = if self.requester_active(requester) {
            None
        } else {
            let floor = self.min_active_vtime().unwrap_or(0.0);
            Some(
                self.vtimes
                    .get(requester)
                    .copied()
                    .unwrap_or(0.0)
                    .max(floor),
            )
        };
        self.seq += 1;
        let seq = self.seq;
        let group = self.groups.entry(platform.clone()).or_default();
        let entry = group
            .entry(requester.to_owned())
            .or_insert_with(|| Requester {
                weight: 1.0,
                ..Requester::default()
            });
        entry.items.insert((priority, seq, id.clone()));
        let vtime =
            start_vtime.unwrap_or_else(|| self.vtimes.get(requester).copied().unwrap_or(0.0));
        self.set_vtime(requester, vtime);
        self.index
            .insert(id, (platform, requester.to_owned(), priority, seq));
    }

    fn set_vtime(&mut self, requester: &str, vtime: f64) {
        self.vtimes.insert(requester.to_owned(), vtime);
        for group in self.groups.values_mut() {
            if let Some(r) = group.get_mut(requester) {
                r.vtime = vtime;
            }
        }
    }

    /// Removes `id` if queued.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some((platform, requester, priority, seq)) = self.index.remove(id) else {
            return false;
        };
        if let Some(group) = self.groups.get_mut(&platform) {
            if let Some(r) = group.get_mut(&requester) {
                r.items.remove(&(priority, seq, id.to_owned()));
                if r.items.is_empty() {
                    group.remove(&requester);
                }
            }
            if group.is_empty() {
                self.groups.remove(&platform);
            }
        }
        true
    }

    /// Takes the next item an agent with `properties` may run, charging its requester. With
    /// `agent`, items that ask to avoid that agent are passed over.
    pub fn pop_for(&mut self, properties: &Platform, agent: Option<&str>) -> Option<ItemId> {
        let mut best: Option<(i32, f64, u64, ItemId, String, f64)> = None;
        for (platform, group) in &self.groups {
            if !platform.satisfied_by(properties) || agent.is_some_and(|a| platform.avoids(a)) {
                continue;
            }
            for (name, r) in group {
                let Some((priority, seq, id)) = r.items.first() else {
                    continue;
                };
                let better = best.as_ref().is_none_or(|(bp, bv, bs, _, _, _)| {
                    priority
                        .cmp(bp)
                        .then(r.vtime.total_cmp(bv))
                        .then(seq.cmp(bs))
                        .is_lt()
                });
                if better {
                    best = Some((*priority, r.vtime, *seq, id.clone(), name.clone(), r.weight));
                }
            }
        }
        let (_, vtime, _, id, requester, weight) = best?;
        self.remove(&id);
        self.set_vtime(&requester, vtime + 1.0 / weight.max(f64::EPSILON));
        Some(id)
    }

    /// Position of `id` in its own platform group, counting items that would be picked
    /// before it by priority and arrival (an estimate for "queue position" displays).
    pub fn position(&self, id: &str) -> Option<usize> {
        let (platform, _, priority, seq) = self.index.get(id)?;
        let group = self.groups.get(platform)?;
        Some(
            group
                .values()
                .flat_map(|r| r.items.iter())
                .filter(|(p, s, _)| (*p, *s) < (*priority, *seq))
                .count(),
        )
    }

    /// Every requester with queued work, in the order the queue would serve their next items
    /// now: the lowest priority value first, then the least virtual time, then first come.
    /// Platforms are ignored, so this is the order an agent satisfying every platform would
    /// see; one that satisfies fewer skips the requesters it cannot serve.
    pub fn shares(&self) -> Vec<RequesterShare> {
        struct Tally<'a> {
            /// (priority, seq) of its next item: the one `pop_for` would compare.
            head: (i32, u64),
            queued: usize,
            vtime: f64,
            weight: f64,
            /// (seq, id) of the item queued first.
            oldest: (u64, &'a ItemId),
        }
        let mut tallies: HashMap<&str, Tally<'_>> = HashMap::new();
        for (name, r) in self.groups.values().flat_map(|g| g.iter()) {
            let Some((priority, seq, _)) = r.items.first() else {
                continue;
            };
            // Items are ordered by priority first, so the oldest may be anywhere in the set.
            let Some((_, oldest_seq, oldest_id)) = r.items.iter().min_by_key(|(_, s, _)| *s) else {
                continue;
            };
            let tally = tallies.entry(name.as_str()).or_insert_with(|| Tally {
                head: (*priority, *seq),
                queued: 0,
                vtime: r.vtime,
                weight: r.weight,
                oldest: (*oldest_seq, oldest_id),
            });
            tally.queued += r.items.len();
            tally.head = tally.head.min((*priority, *seq));
            if *oldest_seq < tally.oldest.0 {
                tally.oldest = (*oldest_seq, oldest_id);
            }
        }
        let mut order: Vec<(&str, Tally<'_>)> = tallies.into_iter().collect();
        // The comparison `pop_for` makes between the heads of two requesters.
        order.sort_by(|(_, a), (_, b)| {
            a.head
                .0
                .cmp(&b.head.0)
                .then(a.vtime.total_cmp(&b.vtime))
                .then(a.head.1.cmp(&b.head.1))
        });
        order
            .into_iter()
            .map(|(name, t)| RequesterShare {
                requester: name.to_owned(),
                queued: t.queued,
                vtime: t.vtime,
                weight: t.weight,
                oldest: t.oldest.1.clone(),
            })
            .collect()
    }

    /// Every platform with queued work (for the unknown-platform check and status).
    pub fn platforms(&self) -> impl Iterator<Item = &Platform> {
        self.groups.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> Platform {
        Platform::default()
    }

    #[test]
    fn lower_priority_value_runs_first_then_fifo() {
        let mut q = FairQueue::new();
        q.push("a".into(), any(), "u", 0);
        q.push("b".into(), any(), "u", -5);
        q.push("c".into(), any(), "u", 0);
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("b"));
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("a"));
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("c"));
        assert!(q.pop_for(&any(), None).is_none());
    }

    #[test]
    fn a_big_build_cannot_starve_a_small_one() {
        let mut q = FairQueue::new();
        for i in 0..1000 {
            q.push(format!("big{i}"), any(), "ci", 0);
        }
        // Some of the big build runs first.
        for _ in 0..10 {
            assert!(q.pop_for(&any(), None).unwrap().starts_with("big"));
        }
        for i in 0..3 {
            q.push(format!("small{i}"), any(), "laptop", 0);
        }
        let next: Vec<String> = (0..6).map(|_| q.pop_for(&any(), None).unwrap()).collect();
        let smalls = next.iter().filter(|n| n.starts_with("small")).count();
        assert_eq!(smalls, 3, "the small build gets every other slot: {next:?}");
    }

    #[test]
    fn shares_alternate_between_active_requesters() {
        let mut q = FairQueue::new();
        for i in 0..4 {
            q.push(format!("a{i}"), any(), "a", 0);
            q.push(format!("b{i}"), any(), "b", 0);
        }
        let order: Vec<String> = (0..8).map(|_| q.pop_for(&any(), None).unwrap()).collect();
        for pair in order.chunks(2) {
            assert_ne!(pair[0].chars().next(), pair[1].chars().next(), "{order:?}");
        }
    }

    #[test]
    fn work_that_avoids_an_agent_goes_to_another() {
        let mut q = FairQueue::new();
        let retry = Platform::new([("avoid-agent".to_owned(), "a1".to_owned())]);
        q.push("retry".into(), retry, "u", 0);
        assert!(q.pop_for(&any(), Some("a1")).is_none());
        assert_eq!(q.pop_for(&any(), Some("a2")).as_deref(), Some("retry"));
        q.push(
            "retry2".into(),
            Platform::new([("avoid-agent".to_owned(), "a1".to_owned())]),
            "u",
            0,
        );
        // Without an alternative (one agent), the avoided agent still takes it.
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("retry2"));
    }

    #[test]
    fn agents_only_get_work_they_satisfy() {
        let mut q = FairQueue::new();
        let gpu = Platform::new([("pool".to_owned(), "gpu".to_owned())]);
        q.push("g".into(), gpu.clone(), "u", 0);
        q.push("x".into(), any(), "u", 1);
        let plain = Platform::new([("OSFamily".to_owned(), "linux".to_owned())]);
        assert_eq!(q.pop_for(&plain, None).as_deref(), Some("x"));
        assert!(q.pop_for(&plain, None).is_none());
        assert_eq!(q.pop_for(&gpu, None).as_deref(), Some("g"));
    }

    fn names(q: &FairQueue) -> Vec<String> {
        q.shares().into_iter().map(|s| s.requester).collect()
    }

    #[test]
    fn shares_follow_the_order_of_service() {
        let mut q = FairQueue::new();
        for i in 0..3 {
            q.push(format!("a{i}"), any(), "a", 0);
        }
        q.push("b0".into(), any(), "b", 0);
        q.push("b1".into(), any(), "b", 0);
        // Equal service: first come first.
        assert_eq!(names(&q), ["a", "b"]);
        let a = &q.shares()[0];
        assert_eq!((a.queued, a.oldest.as_str(), a.vtime), (3, "a0", 0.0));
        // `a` is served once: `b` has had less and comes first, as `pop_for` agrees.
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("a0"));
        assert_eq!(names(&q), ["b", "a"]);
        assert_eq!(q.shares()[1].vtime, 1.0);
        assert_eq!(q.pop_for(&any(), None).as_deref(), Some("b0"));
        // Equal again: `a` arrived first.
        assert_eq!(names(&q), ["a", "b"]);
    }

    #[test]
    fn shares_put_a_lower_priority_value_first_and_count_every_platform() {
        let mut q = FairQueue::new();
        let gpu = Platform::new([("pool".to_owned(), "gpu".to_owned())]);
        q.push("a0".into(), any(), "a", 0);
        q.push("b0".into(), any(), "b", 5);
        q.push("b1".into(), gpu, "b", -1);
        let shares = q.shares();
        assert_eq!(names(&q), ["b", "a"]);
        assert_eq!((shares[0].queued, shares[0].oldest.as_str()), (2, "b0"));
        assert!(q.remove("b1"));
        assert_eq!(names(&q), ["a", "b"]);
    }

    #[test]
    fn removal_and_positions() {
        let mut q = FairQueue::new();
        q.push("a".into(), any(), "u", 0);
        q.push("b".into(), any(), "v", 0);
        q.push("c".into(), any(), "u", 0);
        assert_eq!(q.position("c"), Some(2));
        assert!(q.remove("b"));
        assert!(!q.remove("b"));
        assert_eq!(q.position("c"), Some(1));
        assert_eq!(q.len(), 2);
    }
}
