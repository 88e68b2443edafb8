//! Values made once per key for a run, shared by its threads: the first thread that
//! needs one makes it while the others that need the same one wait for it, instead of
//! each making its own (a fleet run's workers all reach the C library at once). The
//! crate's base, used by every layer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A map from keys to values made once each (see the module).
pub struct Memo<K, V> {
    slots: Mutex<HashMap<K, Arc<Mutex<Option<V>>>>>,
}

impl<K: Eq + Hash, V: Clone> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    /// The value of `key`, made by `make` if no thread made it yet. A failure is not
    /// kept: the next caller tries again. Only `key`'s slot is held while `make` runs.
    pub fn get_or_try<E>(&self, key: K, make: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut made = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = made.as_ref() {
            return Ok(v.clone());
        }
        let v = make()?;
        *made = Some(v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_by_one_thread_while_the_others_wait_and_failures_are_not_kept() {
        let memo: Memo<u32, u32> = Memo::default();
        let calls = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = memo.get_or_try(1, || {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::yield_now();
                        Ok::<u32, ()>(7)
                    });
                    assert_eq!(v, Ok(7));
                });
            }
        });
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(memo.get_or_try(2, || Err("no")), Err("no"));
        assert_eq!(memo.get_or_try(2, || Ok::<u32, &str>(3)), Ok(3));
    }
}
