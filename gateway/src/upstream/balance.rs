//! Node selection: smooth weighted round robin (nginx's algorithm) and consistent hashing.
//!
//! Both are shard-local: each shard balances its own share of the traffic, which over many
//! requests gives the configured weights without any cross-core state.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};

/// A per-shard balancer over the nodes of one upstream.
pub enum Balancer {
    RoundRobin(RefCell<SmoothWrr>),
    Chash(Ring),
}

impl Balancer {
    pub fn round_robin(weights: &[u32]) -> Balancer {
        Balancer::RoundRobin(RefCell::new(SmoothWrr::new(weights)))
    }

    pub fn chash(weights: &[u32]) -> Balancer {
        Balancer::Chash(Ring::new(weights))
    }

    /// Picks a node index among those `usable` says are up; `key` is the chash key (ignored by
    /// round robin). Returns `None` only when no node is usable.
    pub fn pick(&self, key: &[u8], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self {
            Balancer::RoundRobin(wrr) => wrr.borrow_mut().next(usable),
            Balancer::Chash(ring) => ring.pick(key, usable),
        }
    }
}

/// nginx's smooth weighted round robin: deterministic, spreads heavy nodes evenly.
pub struct SmoothWrr {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl SmoothWrr {
    pub fn new(weights: &[u32]) -> SmoothWrr {
        SmoothWrr {
            weights: weights.iter().map(|w| i64::from(*w)).collect(),
            current: vec![0; weights.len()],
        }
    }

    pub fn next(&mut self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if self.weights[i] <= 0 || !usable(i) {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// A consistent-hash ring with virtual nodes proportional to weight.
pub struct Ring {
    points: Vec<(u64, usize)>,
}

const VNODES_PER_WEIGHT: u32 = 40;

impl Ring {
    pub fn new(weights: &[u32]) -> Ring {
        let mut points = Vec::new();
        for (node, w) in weights.iter().enumerate() {
            for v in 0..w.saturating_mul(VNODES_PER_WEIGHT).min(4000) {
                points.push((
                    hash_key(&[&node.to_le_bytes()[..], &v.to_le_bytes()[..]]),
                    node,
                ));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    pub fn pick(&self, key: &[u8], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash_key(&[key]);
        let start = self.points.partition_point(|(p, _)| *p < h);
        // Walk clockwise past nodes that are down, so only their keys move.
        for i in 0..self.points.len() {
            let (_, node) = self.points[(start + i) % self.points.len()];
            if usable(node) {
                return Some(node);
            }
        }
        None
    }
}

fn hash_key(parts: &[&[u8]]) -> u64 {
    // SipHash with fixed keys: stable across shards and restarts, which consistent hashing needs.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x5348_4152_4447_4154, 0x4348_4153_4852_494e);
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_follows_weights() {
        let mut wrr = SmoothWrr::new(&[5, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..70 {
            counts[wrr.next(&|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 10, 10]);
    }

    #[test]
    fn smooth_wrr_skips_down_and_zero_weight() {
        let mut wrr = SmoothWrr::new(&[1, 0, 1]);
        for _ in 0..10 {
            assert_eq!(wrr.next(&|i| i != 0), Some(2));
        }
        assert_eq!(wrr.next(&|_| false), None);
    }

    #[test]
    fn chash_is_stable_and_moves_only_keys_of_a_down_node() {
        let ring = Ring::new(&[1, 1, 1]);
        let keys: Vec<String> = (0..300).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), &|_| true).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), &|_| true).unwrap())
            .collect();
        assert_eq!(before, again);
        for n in 0..3 {
            assert!(before.contains(&n), "every node gets keys");
        }
        let after: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), &|i| i != 1).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 1 {
                assert_eq!(a, b, "keys of healthy nodes stay put");
            } else {
                assert_ne!(*a, 1);
            }
        }
    }
}
