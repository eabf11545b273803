//! A map that keeps its most recently used entries within a byte budget
//! (the process-wide caches of decoded data: [`crate::hot`] row groups and
//! [`crate::footers`]). Eviction scans for the oldest entry: these caches
//! hold hundreds of entries, not millions.

use std::collections::HashMap;
use std::hash::Hash;

pub(crate) struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    bytes: usize,
    budget: usize,
    clock: u64,
}

struct Entry<V> {
    value: V,
    bytes: usize,
    used: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map holding at most `budget` bytes.
    pub(crate) fn new(budget: usize) -> Self {
        Self { entries: HashMap::new(), bytes: 0, budget, clock: 0 }
    }

    /// The value under `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.used = clock;
        Some(entry.value.clone())
    }

    /// Keeps `value` (`bytes` big) under `key`, evicting the least recently
    /// used entries to stay within the budget. A value bigger than a quarter
    /// of the budget is not kept (it would flush everything else).
    pub(crate) fn insert(&mut self, key: K, value: V, bytes: usize) {
        if bytes > self.budget / 4 {
            return;
        }
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.bytes -= evicted.bytes;
            }
        }
        self.clock += 1;
        self.entries.insert(key, Entry { value, bytes, used: self.clock });
        self.bytes += bytes;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recently_used_within_the_budget() {
        let mut lru = Lru::new(100);
        lru.insert("a", 1, 20);
        lru.insert("b", 2, 20);
        lru.insert("c", 3, 20);
        assert_eq!(lru.get(&"a"), Some(1)); // b is now the oldest
        lru.insert("d", 4, 25);
        lru.insert("e", 5, 25); // 110 > 100: b goes
        assert_eq!(lru.get(&"b"), None);
        assert_eq!(lru.get(&"a"), Some(1));
        assert_eq!(lru.len(), 4);
        lru.insert("big", 6, 26); // over a quarter: not kept
        assert_eq!(lru.get(&"big"), None);
        lru.insert("a", 7, 5); // replaced, its bytes recounted
        assert_eq!(lru.get(&"a"), Some(7));
        assert_eq!(lru.bytes, 5 + 20 + 25 + 25);
    }
}
