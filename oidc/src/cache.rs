//! Bounded, shard-local TTL cache keyed by whole tokens.
//!
//! One type serves the verified-token cache, the negative cache (short TTL for tokens that
//! failed) and the introspection cache. It lives on one shard, so there are no locks and no
//! atomics; counters are `Cell`s, which also keeps the type `!Sync` on purpose.
//!
//! Keys are the full token bytes in a `HashMap`: lookups compare the whole key, so a forged token
//! can never hit another token's entry. The hasher is foldhash with a per-process random seed,
//! not std's SipHash: every request hashes its 1-3 KiB token or cookie, where SipHash cost ~1.6k
//! instructions per KiB (callgrind) and foldhash about a fifth of that. Foldhash is only
//! minimally DoS-resistant, which is enough here: the seed is secret, and the table is bounded
//! by `capacity`, so even a successful collision attack only turns lookups in this one shard's
//! bounded table into linear scans. Callers that share one cache between routes with different
//! key sets or policies must prefix the key with a route fingerprint.
//!
//! Eviction takes the entry closest to expiry, which is every expired entry first. A min-heap
//! on `(expires_at, seq)` finds it; entries overwritten or removed leave stale heap records,
//! skipped when popped and dropped wholesale when the heap grows past twice the map (an
//! O(n) rebuild every O(n) operations, so amortised O(1)).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;

use foldhash::quality::RandomState;

struct Entry<V> {
    value: V,
    expires_at_ms: u64,
    seq: u64,
}

/// Min-heap record: `(expires_at_ms, seq, key)`; stale when `seq` no longer matches the map.
type HeapRecord = Reverse<(u64, u64, Rc<[u8]>)>;

/// A bounded map from token bytes to `V`, each entry with an absolute expiry in milliseconds.
pub struct TtlCache<V> {
    map: HashMap<Rc<[u8]>, Entry<V>, RandomState>,
    heap: BinaryHeap<HeapRecord>,
    capacity: usize,
    next_seq: u64,
    hits: Cell<u64>,
    misses: Cell<u64>,
    evictions: u64,
}

impl<V> std::fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .field("hits", &self.hits.get())
            .field("misses", &self.misses.get())
            .field("evictions", &self.evictions)
            .finish()
    }
}

impl<V> TtlCache<V> {
    /// A cache holding at most `capacity` entries (0 disables it: nothing is stored).
    pub fn new(capacity: usize) -> TtlCache<V> {
        TtlCache {
            map: HashMap::with_capacity_and_hasher(capacity.min(1 << 16), RandomState::default()),
            heap: BinaryHeap::new(),
            capacity,
            next_seq: 0,
            hits: Cell::new(0),
            misses: Cell::new(0),
            evictions: 0,
        }
    }

    /// The value for `key` if present and `now_ms < expires_at`. Expiry is checked on every
    /// hit; an expired entry reads as a miss and is reclaimed by later inserts or
    /// [`TtlCache::purge_expired`]. Does not allocate.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&V> {
        match self.map.get(key) {
            Some(e) if now_ms < e.expires_at_ms => {
                self.hits.set(self.hits.get() + 1);
                Some(&e.value)
            }
            _ => {
                self.misses.set(self.misses.get() + 1);
                None
            }
        }
    }

    /// Stores `value` until `expires_at_ms`, replacing any entry for the same key. When full,
    /// the entry closest to expiry (an expired one if any) makes room.
    pub fn insert(&mut self, key: &[u8], value: V, expires_at_ms: u64) {
        if self.capacity == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(k) = self.map.get_key_value(key).map(|(k, _)| Rc::clone(k)) {
            if let Some(e) = self.map.get_mut(key) {
                *e = Entry {
                    value,
                    expires_at_ms,
                    seq,
                };
            }
            self.heap.push(Reverse((expires_at_ms, seq, k)));
        } else {
            while self.map.len() >= self.capacity {
                if !self.evict_one() {
                    break;
                }
            }
            let k: Rc<[u8]> = Rc::from(key);
            self.heap.push(Reverse((expires_at_ms, seq, Rc::clone(&k))));
            self.map.insert(
                k,
                Entry {
                    value,
                    expires_at_ms,
                    seq,
                },
            );
        }
        if self.heap.len() > 2 * self.map.len() + 16 {
            self.rebuild_heap();
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        // The heap record goes stale and is skipped later.
        self.map.remove(key).map(|e| e.value)
    }

    /// Drops every entry that expired at or before `now_ms`; returns how many.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let mut removed = 0;
        while let Some(Reverse((exp, seq, key))) = self.heap.peek() {
            if *exp > now_ms {
                break;
            }
            let live = self.map.get(&key[..]).is_some_and(|e| e.seq == *seq);
            if live {
                let key = Rc::clone(key);
                self.map.remove(&key[..]);
                removed += 1;
            }
            self.heap.pop();
        }
        removed
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.heap.clear();
    }

    /// Entries held, expired ones not yet reclaimed included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    /// Live entries pushed out to make room (expired ones reclaimed on the way count too).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Removes the live entry with the smallest expiry. `false` if there was none.
    fn evict_one(&mut self) -> bool {
        while let Some(Reverse((_, seq, key))) = self.heap.pop() {
            if self.map.get(&key[..]).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key[..]);
                self.evictions += 1;
                return true;
            }
        }
        false
    }

    fn rebuild_heap(&mut self) {
        self.heap = self
            .map
            .iter()
            .map(|(k, e)| Reverse((e.expires_at_ms, e.seq, Rc::clone(k))))
            .collect();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_and_expiry() {
        let mut c = TtlCache::new(4);
        c.insert(b"tok", 1u32, 1000);
        assert_eq!(c.get(b"tok", 999), Some(&1));
        assert_eq!(c.get(b"tok", 1000), None);
        assert_eq!(c.get(b"other", 0), None);
        assert_eq!((c.hits(), c.misses()), (1, 2));
        assert_eq!(c.purge_expired(1000), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn prefix_of_a_key_does_not_hit() {
        let mut c = TtlCache::new(4);
        c.insert(b"abcdef", (), 10);
        assert!(c.get(b"abcde", 0).is_none());
        assert!(c.get(b"abcdefg", 0).is_none());
        assert!(c.get(b"abcdef", 0).is_some());
    }

    #[test]
    fn evicts_expired_then_closest_to_expiry() {
        let mut c = TtlCache::new(3);
        c.insert(b"a", 'a', 500);
        c.insert(b"b", 'b', 100);
        c.insert(b"c", 'c', 300);
        c.insert(b"d", 'd', 400);
        assert!(c.get(b"b", 0).is_none(), "closest to expiry goes first");
        c.insert(b"e", 'e', 900);
        assert!(c.get(b"c", 0).is_none());
        assert_eq!(c.len(), 3);
        assert_eq!(c.evictions(), 2);
    }

    #[test]
    fn overwrite_moves_expiry_and_stale_records_are_skipped() {
        let mut c = TtlCache::new(2);
        c.insert(b"a", 1, 100);
        c.insert(b"b", 2, 200);
        c.insert(b"a", 3, 1000);
        c.insert(b"c", 4, 300);
        assert_eq!(
            c.get(b"a", 0),
            Some(&3),
            "a was refreshed, so b (200) is the one evicted"
        );
        assert!(c.get(b"b", 0).is_none());
        assert_eq!(c.remove(b"a"), Some(3));
        assert_eq!(c.purge_expired(10_000), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn stays_bounded_under_churn() {
        let mut c = TtlCache::new(64);
        for i in 0u64..10_000 {
            let key = (i % 97).to_le_bytes();
            c.insert(&key, i, (i * 7919) % 5000);
            assert!(c.len() <= 64);
            assert!(c.heap.len() <= 2 * c.map.len() + 17);
        }
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut c = TtlCache::new(0);
        c.insert(b"a", (), 10);
        assert!(c.get(b"a", 0).is_none());
    }
}
