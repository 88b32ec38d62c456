//! Where guest code runs: two CPU lanes, so long invocations cannot make
//! short ones wait.
//!
//! Every invocation starts in the *foreground*: the tokio runtime's workers,
//! which also run the gateway. Guests yield at every epoch tick; one that
//! has used more than [`FOREGROUND_CPU_MAX`] of CPU when it yields moves,
//! future and all, to the *background*: threads of their own at the lowest
//! OS priority (nice 19), one per core but one, so the kernel runs
//! foreground work first and a core is free for it the moment it wakes. A
//! function whose last invocation was a hog ([`HEAVY_CPU`]) starts its next
//! one there ([`History`]). A request that takes a millisecond then never
//! queues behind one that takes ten seconds, nor behind the kernel work of
//! a memory bomb starting up.
//!
//! The background does not serve by arrival: each turn goes to the next
//! tenant with work, and within it to the next function, round robin, one
//! poll (at most one epoch tick of guest code) per turn. Twenty hogs of one
//! tenant get the same share as one hog of another.
//!
//! This is a two-level feedback queue, chosen by measurement (BENCHMARKS.md,
//! "Fair CPU"): with a single lane, twenty spinning guests put every other
//! request behind their time slices.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_task::Runnable;

use crate::shed::Load;

/// CPU an invocation may use in the foreground before it moves to the
/// background. A typical request needs tens of microseconds; guests yield
/// at epoch ticks (1 ms), so a hog spends at most a tick or two here.
pub const FOREGROUND_CPU_MAX: Duration = Duration::from_millis(1);

/// The background's OS priority: the lowest, so any foreground thread wins
/// the CPU, yet not `SCHED_IDLE`, under which a saturated foreground would
/// starve it entirely (nice 19 still gets about 1.5% of a busy core).
const BACKGROUND_NICE: i32 = 19;

/// Threads of the background lane unless configured: one per core but one
/// (at least one), so a core is free for the foreground the moment a light
/// request arrives. With every core busy, at any priority, the kernel's
/// wakeup latency alone doubles a light request's p99 on two cores; a core
/// kept costs long invocations a core (BENCHMARKS.md, "Fair CPU").
pub fn background_threads_default() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_sub(1)
        .max(1)
}

/// CPU past which an invocation marks its function a hog, whose next
/// invocations start in the background: far above a cold start's few
/// milliseconds of page faults and lazy set-up, which must not send the
/// burst that follows a light function's first request to the background.
pub const HEAVY_CPU: Duration = Duration::from_millis(10);

/// Whether a function's last invocation was a hog (used [`HEAVY_CPU`]).
/// Its next one then starts in the background, so a known hog does not
/// spend its first millisecond (instantiation, page faults, growing its
/// memory: kernel work that holds the process's memory map) beside light
/// requests; a function that turns light again comes back at its next
/// invocation.
#[derive(Debug, Default)]
pub(crate) struct History {
    heavy: AtomicBool,
}

impl History {
    pub(crate) fn heavy(&self) -> bool {
        self.heavy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_heavy(&self, heavy: bool) {
        self.heavy.store(heavy, Ordering::Relaxed);
    }
}

/// Who shares the background fairly: a tenant, then its functions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Share {
    pub tenant: Arc<str>,
    pub function: Arc<str>,
}

/// The background lane: its threads and their fair queue. Threads start
/// with the first invocation moved there and end when this is dropped.
pub(crate) struct Background {
    shared: Arc<Shared>,
    threads: usize,
    started: std::sync::Once,
    /// Threads that did start: none, and work stays in the foreground.
    running: AtomicUsize,
    /// Invocations run here so far.
    moved: AtomicU64,
}

struct Shared {
    queue: Mutex<FairQueue<Queued>>,
    ready: Condvar,
}

/// A poll waiting for a thread, since `at`: the wait is its function's
/// load signal ([`crate::shed`]).
struct Queued {
    runnable: Runnable,
    at: Instant,
    load: Arc<Load>,
}

impl Background {
    pub(crate) fn new(threads: usize) -> Background {
        Background {
            shared: Arc::new(Shared {
                queue: Mutex::new(FairQueue::default()),
                ready: Condvar::new(),
            }),
            threads,
            started: std::sync::Once::new(),
            running: AtomicUsize::new(0),
            moved: AtomicU64::new(0),
        }
    }

    /// Runs `future` in the background, in `share`'s turns, telling `load`
    /// how long each poll waited; the task gives its output (dropping it
    /// cancels the future). Gives `future` back when no background thread
    /// could start, for its caller to run.
    pub(crate) fn spawn<F>(
        &self,
        share: Share,
        load: Arc<Load>,
        future: F,
    ) -> Result<async_task::Task<F::Output>, F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.start();
        if self.running.load(Ordering::Relaxed) == 0 {
            return Err(future);
        }
        self.moved.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let schedule = move |runnable| {
            let queued = Queued {
                runnable,
                at: Instant::now(),
                load: load.clone(),
            };
            shared.push(&share, queued);
        };
        let (runnable, task) = async_task::spawn(future, schedule);
        runnable.schedule();
        Ok(task)
    }

    /// Invocations run in the background so far.
    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn start(&self) {
        self.started.call_once(|| {
            // Guests use tokio (timers, sockets, blocking file I/O): the
            // background polls them inside the runtime that started it.
            let runtime = tokio::runtime::Handle::try_current().ok();
            for n in 0..self.threads {
                let shared = self.shared.clone();
                let runtime = runtime.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("updraft-bg-{n}"))
                    .spawn(move || {
                        let _entered = runtime.as_ref().map(|r| r.enter());
                        lower_priority();
                        ON_BACKGROUND.set(true);
                        while let Some(queued) = shared.next() {
                            let now = Instant::now();
                            queued
                                .load
                                .waited(now.saturating_duration_since(queued.at), now);
                            queued.runnable.run();
                        }
                    });
                match spawned {
                    Ok(_) => {
                        self.running.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::error!("cannot start a background lane thread: {e}"),
                }
            }
            if self.running.load(Ordering::Relaxed) == 0 {
                tracing::error!(
                    "no background lane thread started: long invocations stay in the foreground"
                );
            }
        });
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FairQueue<Queued>> {
        // The queue is consistent between statements: a poisoned lock holds no torn state.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, share: &Share, queued: Queued) {
        self.lock().push(share, queued);
        self.ready.notify_one();
    }

    /// The next poll in fair order; `None` once closed.
    fn next(&self) -> Option<Queued> {
        let mut queue = self.lock();
        loop {
            if queue.closed {
                return None;
            }
            if let Some(runnable) = queue.pop() {
                return Some(runnable);
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Makes the calling thread a background one for the kernel: nice 19, a
/// weight of 15 against a normal thread's 1024, so a light request that
/// wakes takes the core almost at once. (`SCHED_IDLE` was measured too: no
/// better, since with every core busy the tail is the kernel's wakeup
/// latency, which a policy does not change; see BENCHMARKS.md.)
pub(crate) fn lower_priority() {
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE)
    {
        tracing::warn!("cannot lower the background lane's priority: {e}");
    }
}

thread_local! {
    /// Whether this thread is a background one: what runs here stays here.
    static ON_BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is in the background lane.
pub(crate) fn on_background() -> bool {
    ON_BACKGROUND.get()
}

/// Round robin over tenants, then over each tenant's functions, then first
/// in, first out within a function.
struct FairQueue<T> {
    tenants: VecDeque<Arc<str>>,
    work: HashMap<Arc<str>, TenantWork<T>>,
    closed: bool,
}

struct TenantWork<T> {
    functions: VecDeque<Arc<str>>,
    items: HashMap<Arc<str>, VecDeque<T>>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            tenants: VecDeque::new(),
            work: HashMap::new(),
            closed: false,
        }
    }
}

impl<T> FairQueue<T> {
    fn push(&mut self, share: &Share, item: T) {
        let tenant = self.work.entry(share.tenant.clone()).or_insert_with(|| {
            self.tenants.push_back(share.tenant.clone());
            TenantWork {
                functions: VecDeque::new(),
                items: HashMap::new(),
            }
        });
        tenant
            .items
            .entry(share.function.clone())
            .or_insert_with(|| {
                tenant.functions.push_back(share.function.clone());
                VecDeque::new()
            })
            .push_back(item);
    }

    fn pop(&mut self) -> Option<T> {
        let tenant = self.tenants.pop_front()?;
        let work = self.work.get_mut(&tenant)?;
        let function = work.functions.pop_front()?;
        let items = work.items.get_mut(&function)?;
        let item = items.pop_front();
        if items.is_empty() {
            work.items.remove(&function);
        } else {
            work.functions.push_back(function);
        }
        if work.functions.is_empty() {
            self.work.remove(&tenant);
        } else {
            self.tenants.push_back(tenant);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tenant: &str, function: &str) -> Share {
        Share {
            tenant: tenant.into(),
            function: function.into(),
        }
    }

    #[test]
    fn turns_go_round_tenants_then_functions_not_by_arrival() {
        let mut queue = FairQueue::default();
        for n in 0..4 {
            queue.push(&share("a", "spin"), format!("a/spin#{n}"));
        }
        queue.push(&share("a", "other"), "a/other#0".to_string());
        queue.push(&share("b", "hello"), "b/hello#0".to_string());
        queue.push(&share("b", "hello"), "b/hello#1".to_string());
        let order: Vec<String> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                "a/spin#0",
                "b/hello#0",
                "a/other#0",
                "b/hello#1",
                "a/spin#1",
                "a/spin#2",
                "a/spin#3",
            ]
        );
        assert!(queue.work.is_empty() && queue.tenants.is_empty());
    }

    #[test]
    fn work_pushed_back_after_its_turn_waits_for_the_others() {
        let mut queue = FairQueue::default();
        queue.push(&share("a", "f"), 1);
        queue.push(&share("b", "g"), 2);
        assert_eq!(queue.pop(), Some(1));
        // `a` runs again (an epoch yield): it goes behind `b`.
        queue.push(&share("a", "f"), 3);
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn background_runs_futures_at_low_priority_with_the_runtime_entered() {
        let background = Background::new(1);
        let Ok(task) = background.spawn(share("t", "f"), Arc::default(), async {
            // A tokio timer needs the runtime; the thread its priority.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
            (on_background(), nice.ok())
        }) else {
            panic!("no background thread started");
        };
        assert_eq!(task.await, (true, Some(BACKGROUND_NICE)));
        assert!(!on_background());
    }
}
