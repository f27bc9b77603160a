//! `kubelisten:listener/chain-state`: key/value data shared along one chain for one event.

use std::sync::{Arc, Mutex, PoisonError};

/// Largest number of keys a chain may hold for one event.
const MAX_KEYS: usize = 256;
/// Largest size of one key plus its value, in bytes.
const MAX_ENTRY_BYTES: usize = 64 << 10;
/// Largest size of all keys and values together, in bytes: the state lives in host memory,
/// outside every listener's memory limit, once per event in flight.
const MAX_TOTAL_BYTES: usize = 1 << 20;

/// The per-event chain state; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ChainState(Arc<Mutex<Vec<(String, String)>>>);

impl ChainState {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Stores `value` under `key`. Returns false (and stores nothing) when the entry is too big,
    /// or the state already holds too many keys or would grow past its total size.
    pub fn set(&self, key: String, value: String) -> bool {
        let size = key.len() + value.len();
        if size > MAX_ENTRY_BYTES {
            return false;
        }
        let mut entries = self.lock();
        let others: usize = entries
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if others + size > MAX_TOTAL_BYTES {
            return false;
        }
        if let Some(entry) = entries.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = value;
            return true;
        }
        if entries.len() >= MAX_KEYS {
            return false;
        }
        entries.push((key, value));
        true
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &str) -> bool {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|(k, _)| k != key);
        entries.len() != before
    }

    /// The keys in insertion order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().iter().map(|(k, _)| k.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace_remove_keep_order() {
        let s = ChainState::default();
        assert!(s.set("b".into(), "1".into()));
        assert!(s.set("a".into(), "2".into()));
        assert!(s.set("b".into(), "3".into()));
        assert_eq!(s.get("b").as_deref(), Some("3"));
        assert_eq!(s.keys(), vec!["b", "a"]);
        assert!(s.remove("b"));
        assert!(!s.remove("b"));
        assert_eq!(s.keys(), vec!["a"]);
        assert!(!s.set("big".into(), "x".repeat(MAX_ENTRY_BYTES)));
    }

    #[test]
    fn the_whole_state_is_bounded_too() {
        let s = ChainState::default();
        let value = "x".repeat(MAX_ENTRY_BYTES - 8);
        let fits = MAX_TOTAL_BYTES / MAX_ENTRY_BYTES;
        for i in 0..fits {
            assert!(s.set(format!("key-{i:04}"), value.clone()), "entry {i}");
        }
        assert!(!s.set("one-more".into(), value.clone()));
        assert!(s.get("one-more").is_none());
        // Replacing an entry counts its new size, not both.
        assert!(s.set("key-0000".into(), value.clone()));
        assert!(s.remove("key-0001"));
        assert!(s.set("one-more".into(), value));
    }
}
