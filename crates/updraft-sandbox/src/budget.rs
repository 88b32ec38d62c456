//! Memory budgets: the server's, and each tenant's when an admin set one.
//! Every instance's linear memory is counted against them as it grows,
//! from its first pages at instantiation, and given back when its store
//! goes.
//!
//! A growth that does not fit waits for memory to free, at most
//! [`MEMORY_WAIT_MAX`] and never past its deadline, then fails with an
//! error that names the budget. Instances that grow at once could each
//! hold a share and all wait for one another, so the youngest of those
//! waiting (by when it first took memory) gives up first, after
//! [`YOUNGEST_WAIT`]: its memory goes to the older ones (the wait-die
//! rule of database locks). Six 1 GiB requests against a 4 GiB budget:
//! the three oldest finish, the others are refused.
//!
//! Counted as memory grows, not reserved at admission by `memory_mb`: a
//! function's limit is what it *may* use, and most use a sliver of it
//! (ten thousand sleeping instances of a 128 MiB function touch 70 KB
//! each), so reserving the limit would turn away work the machine has
//! room for.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Longest an instance waits for memory to free before it fails: long
/// enough for a neighbour's request to end, short enough that a client
/// hears why.
pub const MEMORY_WAIT_MAX: Duration = Duration::from_secs(1);
/// How long the youngest of the instances waiting waits before it gives
/// up its memory to the older ones.
const YOUNGEST_WAIT: Duration = Duration::from_millis(100);

/// Bytes that may be in use at once, and how many are.
#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    used: AtomicUsize,
    freed: Notify,
    /// Ages handed out, one an instance.
    next_age: AtomicU64,
    /// Ages of the instances waiting for memory now.
    waiting: Mutex<BTreeSet<u64>>,
}

impl MemoryBudget {
    pub fn new(total_bytes: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            total: total_bytes,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            next_age: AtomicU64::new(0),
            waiting: Mutex::default(),
        })
    }

    /// The budget, in MiB.
    pub fn total_mb(&self) -> u64 {
        (self.total >> 20) as u64
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|after| *after <= self.total)
            })
            .is_ok()
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // A set of numbers is whole between statements: poison holds no torn state.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes` for the instance of `age`, waiting for memory to
    /// free until `until` (or [`YOUNGEST_WAIT`] while it is the youngest
    /// waiting).
    async fn reserve(&self, age: u64, bytes: usize, until: Instant) -> bool {
        if self.try_reserve(bytes) {
            return true;
        }
        let started = Instant::now();
        self.waiters().insert(age);
        let reserved = loop {
            // Registered before the check: a release between the two wakes it.
            let freed = self.freed.notified();
            if self.try_reserve(bytes) {
                break true;
            }
            let youngest = self.waiters().last() == Some(&age);
            let give_up = match youngest {
                true => until.min(started + YOUNGEST_WAIT),
                false => until,
            };
            if Instant::now() >= give_up {
                break false;
            }
            // Woken by a release, or to look again at who is youngest.
            let _ =
                tokio::time::timeout_at(give_up.min(Instant::now() + YOUNGEST_WAIT).into(), freed)
                    .await;
        };
        self.waiters().remove(&age);
        reserved
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

/// What one instance holds of a budget; given back when it is dropped
/// (with the instance's store).
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<MemoryBudget>,
    /// When it came: the older wait longer.
    age: u64,
    bytes: usize,
}

impl Held {
    pub(crate) fn new(budget: Arc<MemoryBudget>) -> Held {
        let age = budget.next_age.fetch_add(1, Ordering::Relaxed);
        Held {
            budget,
            age,
            bytes: 0,
        }
    }

    /// Holds `bytes` in all, waiting for the rest until `until`; false
    /// when the budget stayed full (what it held is kept).
    pub(crate) async fn grow_to(&mut self, bytes: usize, until: Instant) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if !self
            .budget
            .reserve(self.age, bytes - self.bytes, until)
            .await
        {
            return false;
        }
        self.bytes = bytes;
        true
    }

    pub(crate) fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn growth_past_the_budget_waits_for_memory_to_free() {
        let budget = MemoryBudget::new(4 * MIB);
        let mut first = Held::new(budget.clone());
        assert!(first.grow_to(3 * MIB, in_ms(50)).await);
        let mut second = Held::new(budget.clone());
        // 2 MiB more do not fit, and nothing frees: refused, holding its 1.
        assert!(second.grow_to(MIB, in_ms(50)).await);
        assert!(!second.grow_to(2 * MIB, in_ms(50)).await);
        assert_eq!(budget.used(), 4 * MIB);
        // The older one waits; once the younger goes, it grows.
        let waiting = tokio::spawn(async move {
            let grew = first.grow_to(4 * MIB, in_ms(60_000)).await;
            (grew, first)
        });
        tokio::task::yield_now().await;
        drop(second);
        let (grew, first) = waiting.await.unwrap();
        assert!(grew);
        assert_eq!(budget.used(), 4 * MIB);
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    // One thread: the tasks take turns in the order they came, so which
    // of them wait, and in what order, does not depend on the machine.
    #[tokio::test]
    async fn instances_growing_at_once_leave_the_oldest_the_memory() {
        // Six grow a megabyte at a time towards 4 MiB against 12: each
        // holds a share when it fills, and the youngest give theirs up.
        let budget = MemoryBudget::new(12 * MIB);
        let held: Vec<Held> = (0..6).map(|_| Held::new(budget.clone())).collect();
        let growing: Vec<_> = held
            .into_iter()
            .map(|mut held| {
                tokio::spawn(async move {
                    for mb in 1..=4 {
                        if !held.grow_to(mb * MIB, in_ms(60_000)).await {
                            return (held.age, false, None);
                        }
                        tokio::task::yield_now().await;
                    }
                    // Holds its 4 MiB until the others are done.
                    (held.age, true, Some(held))
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        let mut kept = Vec::new();
        for task in growing {
            let (age, grew, held) = task.await.unwrap();
            outcomes.push((age, grew));
            kept.extend(held);
        }
        outcomes.sort();
        let grew: Vec<bool> = outcomes.iter().map(|o| o.1).collect();
        assert_eq!(grew, [true, true, true, false, false, false]);
        assert_eq!(budget.used(), 12 * MIB);
        drop(kept);
        assert_eq!(budget.used(), 0);
    }
}
