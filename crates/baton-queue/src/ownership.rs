//! Delivery ownership: which node delivers which destination domain (README, "Design:
//! delivery ownership", gives the rule; this is its table and the proof).
//!
//! The table is part of the replicated state and changes only through log commands, so
//! every node computes the same owners from the same prefix of the log:
//!
//! - a domain's owner is chosen by rendezvous hashing over the *owner set* of the current
//!   epoch; nodes join the set by renewing their lease (voters only) and leave it by
//!   releasing their domains after a drain, by being retired by an operator, or by the
//!   leader expiring a lease that was not renewed in time;
//! - every change starts a new *epoch*. A node may deliver a domain only if it owns it
//!   both in the current epoch and in the last *settled* epoch. An epoch settles when
//!   every node that might still be delivering has acknowledged it (`AssignAck`), which
//!   a node does only once nothing it is no longer allowed to deliver is in flight. Acks
//!   count only for the epoch they name, so epochs settle in log order.
//!
//! Why no two nodes deliver one domain at once: take two views (log prefixes) P ⊆ Q of
//! nodes X and Y that both may deliver d. If both have the same settled epoch, they agree
//! on d's owner. Otherwise Q settled an epoch S after P ends, so every node that might
//! still deliver acked S — X among them unless it was expired (its lease, hence its
//! delivering, had ended) or released (it had drained). X acked S after applying S, and
//! no later epoch precedes S's settling in Q, so X's current epoch is S: X owns d in S,
//! and so does Y.

use crate::types::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The replicated ownership table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// Bumped on every change of `nodes`.
    pub epoch: u64,
    /// The owner set of the current epoch.
    pub nodes: BTreeSet<NodeId>,
    /// The last settled epoch and its owner set.
    pub settled_epoch: u64,
    pub settled: BTreeSet<NodeId>,
    /// Nodes whose `AssignAck` of the current epoch is needed before it settles...
    pub must_ack: BTreeSet<NodeId>,
    /// ...and those that gave it.
    pub acked: BTreeSet<NodeId>,
    /// Each node's last applied lease renewal (log index). `Expire` names it, so a
    /// renewal committed after the leader decided to expire a node cancels the expiry.
    pub renewed: BTreeMap<NodeId, u64>,
    /// Nodes an operator is removing: they do not rejoin the owner set on renewal.
    pub retired: BTreeSet<NodeId>,
}

impl Ownership {
    /// The owner of `domain` in the current epoch.
    pub fn owner(&self, domain: &str) -> Option<NodeId> {
        owner_among(&self.nodes, domain)
    }

    /// Whether `node` may start deliveries to `domain` under this view (its lease
    /// aside): it owns the domain in the current and in the last settled epoch.
    pub fn may_deliver(&self, node: NodeId, domain: &str) -> bool {
        self.owner(domain) == Some(node) && owner_among(&self.settled, domain) == Some(node)
    }

    /// Whether this epoch still waits for `node`'s acknowledgement.
    pub fn awaits_ack(&self, node: NodeId) -> bool {
        self.must_ack.contains(&node) && !self.acked.contains(&node)
    }

    pub fn is_settled(&self) -> bool {
        self.settled_epoch == self.epoch
    }

    /// `node` renewed its lease at log index `index`.
    pub(crate) fn renew(&mut self, node: NodeId, index: u64, voter: bool) {
        self.renewed.insert(node, index);
        if voter && !self.nodes.contains(&node) && !self.retired.contains(&node) {
            let mut nodes = self.nodes.clone();
            nodes.insert(node);
            self.reassign(nodes, None);
        }
    }

    /// The leader found `node`'s lease expired, counted from its renewal at `renewal`.
    pub(crate) fn expire(&mut self, node: NodeId, renewal: u64) {
        if self.renewed.get(&node).copied().unwrap_or(0) != renewal {
            return; // renewed since: the expiry was decided on stale facts
        }
        self.gone(node);
    }

    /// `node` drained (nothing in flight) and gives its domains back.
    pub(crate) fn release(&mut self, node: NodeId) {
        self.gone(node);
    }

    /// An operator removes `node`: its domains move away once it acknowledges.
    pub(crate) fn retire(&mut self, node: NodeId) {
        self.retired.insert(node);
        if self.nodes.contains(&node) {
            let mut nodes = self.nodes.clone();
            nodes.remove(&node);
            self.reassign(nodes, None);
        }
    }

    pub(crate) fn ack(&mut self, node: NodeId, epoch: u64) {
        if epoch == self.epoch && self.must_ack.contains(&node) {
            self.acked.insert(node);
            self.try_settle();
        }
    }

    /// Membership changed: forget retirements of nodes that are no longer members.
    pub(crate) fn members_changed(&mut self, members: &BTreeSet<NodeId>) {
        self.retired.retain(|n| members.contains(n));
    }

    /// `node` has certainly stopped delivering (lease expired, or drained).
    fn gone(&mut self, node: NodeId) {
        if self.nodes.contains(&node) {
            let mut nodes = self.nodes.clone();
            nodes.remove(&node);
            self.reassign(nodes, Some(node));
        } else if self.must_ack.remove(&node) {
            self.try_settle();
        }
    }

    fn reassign(&mut self, nodes: BTreeSet<NodeId>, stopped: Option<NodeId>) {
        // Anyone who might be delivering must acknowledge: the new owners, the previous
        // ones, and whoever had not yet acknowledged the previous epoch.
        let mut must: BTreeSet<NodeId> = nodes.iter().copied().collect();
        must.extend(self.nodes.iter().copied());
        must.extend(self.must_ack.difference(&self.acked).copied());
        if let Some(n) = stopped {
            must.remove(&n);
        }
        self.epoch += 1;
        self.nodes = nodes;
        self.must_ack = must;
        self.acked.clear();
        self.try_settle();
    }

    fn try_settle(&mut self) {
        if self.must_ack.is_subset(&self.acked) {
            self.settled_epoch = self.epoch;
            self.settled = self.nodes.clone();
        }
    }
}

/// Rendezvous (highest random weight) hashing: the node with the highest score for the
/// domain owns it. Adding or removing a node moves only that node's share of domains.
/// The hash is fixed here (not std's, which may change between Rust releases) so nodes
/// built by different compilers agree.
pub fn owner_among(nodes: &BTreeSet<NodeId>, domain: &str) -> Option<NodeId> {
    let h = fnv1a(domain.as_bytes());
    nodes.iter().copied().max_by_key(|n| (mix(h ^ mix(*n)), *n))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn rendezvous_spreads_and_moves_little() {
        let three = set(&[1, 2, 3]);
        let two = set(&[1, 2]);
        let mut counts = BTreeMap::new();
        let mut moved = 0;
        for i in 0..3000 {
            let d = format!("d{i}.example");
            let a = owner_among(&three, &d).unwrap();
            *counts.entry(a).or_insert(0) += 1;
            let b = owner_among(&two, &d).unwrap();
            if a != 3 {
                assert_eq!(a, b, "{d} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        for (_, c) in counts {
            assert!((800..1200).contains(&c), "uneven share {c}");
        }
        assert!(moved > 800 && moved < 1200);
        assert_eq!(owner_among(&BTreeSet::new(), "x"), None);
    }

    #[test]
    fn a_joining_node_waits_for_the_previous_owner() {
        let mut o = Ownership::default();
        o.renew(1, 10, true);
        assert_eq!(o.epoch, 1);
        assert!(!o.is_settled());
        o.ack(1, 1);
        assert!(o.is_settled());
        // Node 2 joins: domains moving to it wait for node 1's ack.
        o.renew(2, 11, true);
        let moving = (0..100)
            .map(|i| format!("d{i}"))
            .find(|d| o.owner(d) == Some(2))
            .unwrap();
        assert!(!o.may_deliver(2, &moving));
        assert!(!o.may_deliver(1, &moving));
        o.ack(2, 2);
        assert!(!o.may_deliver(2, &moving));
        o.ack(1, 1); // a stale epoch's ack counts for nothing
        assert!(!o.is_settled());
        o.ack(1, 2);
        assert!(o.may_deliver(2, &moving));
        assert!(!o.may_deliver(1, &moving));
    }

    #[test]
    fn expiry_needs_the_renewal_it_was_decided_on() {
        let mut o = Ownership::default();
        o.renew(1, 10, true);
        o.renew(2, 11, true);
        o.ack(1, 2);
        o.ack(2, 2);
        o.renew(2, 20, true);
        o.expire(2, 11); // renewed since
        assert_eq!(o.nodes, set(&[1, 2]));
        o.expire(2, 20);
        assert_eq!(o.nodes, set(&[1]));
        // Node 2 stopped: only node 1 must acknowledge.
        assert_eq!(o.must_ack, set(&[1]));
        o.ack(1, o.epoch);
        assert!(o.is_settled());
        assert!(o.may_deliver(1, "anything"));
    }

    #[test]
    fn unsettled_acks_carry_over_and_retired_nodes_stay_out() {
        let mut o = Ownership::default();
        o.renew(1, 1, true);
        o.renew(2, 2, true);
        o.renew(3, 3, true);
        // Nobody acked yet; node 3 is retired: it must still ack (it may be delivering).
        o.retire(3);
        assert_eq!(o.nodes, set(&[1, 2]));
        assert!(o.must_ack.contains(&3));
        o.renew(3, 4, true);
        assert_eq!(o.nodes, set(&[1, 2]), "a retired node does not rejoin");
        // A learner does not join either.
        o.renew(4, 5, false);
        assert!(!o.nodes.contains(&4));
        o.ack(1, o.epoch);
        o.ack(2, o.epoch);
        assert!(!o.is_settled());
        o.ack(3, o.epoch);
        assert!(o.is_settled());
        o.members_changed(&set(&[1, 2]));
        assert!(o.retired.is_empty());
    }
}
