//! Load shedding: each function's adaptive concurrency limit, so a server
//! past saturation keeps serving at its peak and answers the excess at
//! once with 429, instead of queueing it until every request is late.
//!
//! The signal is queueing delay where the CPU is contended: the time each
//! of a function's runnable polls waits in the background lane's fair
//! queue ([`crate::lanes`]) before a thread takes it. Waiting does not
//! grow with a function's own running time, only with the work queued
//! ahead of it, so it tells "too many at once" from "slow" (a function
//! that sleeps a second is never limited). And since the queue takes turns
//! round tenants and functions, only the functions that flood it see their
//! waits grow: a tenant using its share is not shed for a neighbour's flood.
//!
//! The control is CoDel's (Nichols and Jacobson, 2012): congestion is
//! every wait above target for a whole [`INTERVAL`], so a burst that
//! drains is not congestion. The target is the function's own: a tenth of
//! its timeout spread over the time slices an invocation of it needs
//! (from its recent CPU), at least [`WAIT_TARGET`]. Shedding starts where
//! queueing begins to threaten deadlines (past them, CPU is spent on
//! invocations that time out, and goodput collapses), while a burst the
//! CPU works off in time is served whole. It drives a limit on invocations in
//! flight, cut multiplicatively and raised additively, as Netflix's
//! concurrency-limits and Envoy's adaptive concurrency filter do:
//! - congestion cuts the limit to what runs times target ÷ the latest
//!   wait (the wait grows with the work queued ahead: one ten times too
//!   long keeps a tenth), at most [`DECREASE`] of it. Not while work
//!   admitted before the last cut still drains: its wait says nothing of
//!   the new limit;
//! - an interval without a wait above target in which the limit turned
//!   someone away raises it by an eighth (at least one);
//! - one in which it turned nobody away removes it: nothing needed it.
//!
//! The limit is reviewed at the function's waits and refusals, so a
//! function with no work costs nothing. Admission is an atomic add.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The least wait in the queue that, kept up for an interval, means the
/// function has more in flight than the CPU serves: CoDel's 5 ms, five of
/// the lane's time slices (an epoch tick each).
pub const WAIT_TARGET: Duration = Duration::from_millis(5);
/// Share of its timeout an invocation may spend queueing for the CPU
/// before its function is shed.
const QUEUE_SHARE: u32 = 10;
/// A time slice: guests yield at every epoch tick.
const SLICE: Duration = crate::engine::EPOCH_TICK;
/// How long waits must stay above target to count, and how often the
/// limit moves: CoDel's 100 ms, long enough for a burst to drain.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// The most a congested interval leaves of the invocations running.
const DECREASE: f64 = 0.8;
/// No limit.
const UNLIMITED: u32 = u32::MAX;

/// One function's load: its invocations in flight and their limit.
#[derive(Debug)]
pub struct Load {
    /// The function's timeout: how long queueing may grow.
    timeout: Duration,
    /// CPU per invocation, a moving average in microseconds.
    cpu_us: AtomicU64,
    in_flight: AtomicU32,
    limit: AtomicU32,
    /// Whether the limit turned an invocation away since it was reviewed.
    refused: AtomicBool,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Since when every wait has been above target (CoDel's
    /// `first_above_time`), and the latest of them.
    above: Option<(Instant, Duration)>,
    /// When the limit was last reviewed, or a wait was last above target:
    /// the start of the calm interval that may raise it.
    calm_since: Instant,
}

/// An invocation admitted; leaves the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an invocation was turned away: its function's limit at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub limit: u32,
}

impl Default for Load {
    fn default() -> Self {
        Load::new(Duration::from_millis(
            updraft_core::manifest::TIMEOUT_MS_DEFAULT,
        ))
    }
}

impl Load {
    /// A function's load, with its timeout.
    pub(crate) fn new(timeout: Duration) -> Load {
        Load {
            timeout,
            cpu_us: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(UNLIMITED),
            refused: AtomicBool::new(false),
            window: Mutex::new(Window {
                above: None,
                calm_since: Instant::now(),
            }),
        }
    }

    /// One of the function's invocations ended, having used `cpu`.
    pub(crate) fn ran(&self, cpu: Duration) {
        let cpu = u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX);
        let average = self.cpu_us.load(Ordering::Relaxed);
        // An eighth of each new one: a few invocations move it.
        let next = match average {
            0 => cpu,
            _ => average - average / 8 + cpu / 8,
        };
        self.cpu_us.store(next, Ordering::Relaxed);
    }

    /// The wait per time slice past which the function's invocations
    /// would queue for more than their share of the timeout.
    fn target(&self) -> Duration {
        let slices = (self.cpu_us.load(Ordering::Relaxed) / SLICE.as_micros() as u64).max(1);
        let per_slice = self.timeout / QUEUE_SHARE / u32::try_from(slices).unwrap_or(u32::MAX);
        per_slice.max(WAIT_TARGET)
    }

    /// Counts one invocation in, or refuses it past the limit.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, Shed> {
        let limit = self.limit.load(Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::Relaxed) < limit {
            return Ok(InFlight(self.clone()));
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.refused.store(true, Ordering::Relaxed);
        // Refusals review the limit too: one whose function no longer
        // queues (its work sleeps) must still rise.
        if let Ok(mut window) = self.window.try_lock() {
            self.review(&mut window, Instant::now());
        }
        match self.limit.load(Ordering::Relaxed) {
            raised if raised > limit => self.admit(),
            _ => Err(Shed { limit }),
        }
    }

    /// One of the function's polls waited `wait` for a thread.
    pub(crate) fn waited(&self, wait: Duration, now: Instant) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if wait > self.target() {
            let since = window.above.map_or(now, |(since, _)| since);
            window.above = Some((since, wait));
            window.calm_since = now;
        } else {
            window.above = None;
        }
        self.review(&mut window, now);
    }

    /// The limit now; `None` when there is none.
    #[cfg(test)]
    fn limit(&self) -> Option<u32> {
        Some(self.limit.load(Ordering::Relaxed)).filter(|l| *l != UNLIMITED)
    }

    fn review(&self, window: &mut Window, now: Instant) {
        let limit = self.limit.load(Ordering::Relaxed);
        let next = match window.above {
            Some((since, latest)) if now.saturating_duration_since(since) >= INTERVAL => {
                window.above = None;
                let in_flight = self.in_flight.load(Ordering::Relaxed);
                if in_flight > limit {
                    return;
                }
                let keep = (self.target().as_secs_f64() / latest.as_secs_f64()).min(DECREASE);
                ((f64::from(in_flight) * keep).round() as u32).max(1)
            }
            None if now.saturating_duration_since(window.calm_since) >= INTERVAL => {
                window.calm_since = now;
                match self.refused.swap(false, Ordering::Relaxed) {
                    false => UNLIMITED,
                    true => limit.saturating_add((limit / 8).max(1)),
                }
            }
            _ => return,
        };
        if next != limit {
            tracing::debug!(limit = next, "adaptive concurrency limit moved");
            self.limit.store(next, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function whose waits count past 5 ms: a tenth of its 50 ms
    /// timeout, and light.
    fn light() -> Arc<Load> {
        Arc::new(Load::new(Duration::from_millis(50)))
    }

    #[test]
    fn the_target_is_a_share_of_the_timeout_per_slice_needed() {
        let load = Load::new(Duration::from_secs(10));
        // A light function: a tenth of its timeout.
        assert_eq!(load.target(), Duration::from_secs(1));
        // One that takes 100 ms of CPU needs 100 slices: 10 ms each.
        load.ran(Duration::from_millis(100));
        assert_eq!(load.target(), Duration::from_millis(10));
        // The average moves by an eighth; never under WAIT_TARGET.
        load.ran(Duration::from_millis(900));
        assert_eq!(load.cpu_us.load(Ordering::Relaxed), 200_000);
        for _ in 0..50 {
            load.ran(Duration::from_secs(5));
        }
        assert_eq!(load.target(), WAIT_TARGET);
    }

    /// `ms` milliseconds after `at`.
    fn at(at: Instant, ms: u64) -> Instant {
        at + Duration::from_millis(ms)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn no_limit_until_every_wait_stays_long_for_an_interval() {
        let load = light();
        let t = Instant::now();
        let running: Vec<_> = (0..50).map(|_| load.admit().unwrap()).collect();
        // A burst that drained: one short wait within the interval.
        load.waited(ms(40), at(t, 0));
        load.waited(ms(1), at(t, 60));
        load.waited(ms(40), at(t, 90));
        load.waited(ms(30), at(t, 150));
        assert_eq!(load.limit(), None);
        // Long from 90 ms to 190 ms: the limit cuts what runs by the latest
        // wait's excess over target (50 ms: ten times 5).
        load.waited(ms(50), at(t, 190));
        assert_eq!(load.limit(), Some(5));
        drop(running);
        // Waits only a little long: a fifth at least.
        let load = light();
        let running: Vec<_> = (0..50).map(|_| load.admit().unwrap()).collect();
        load.waited(ms(6), at(t, 0));
        load.waited(ms(6), at(t, 100));
        assert_eq!(load.limit(), Some(40));
        drop(running);
    }

    #[test]
    fn past_the_limit_invocations_are_refused_until_it_rises() {
        let load = light();
        let t = Instant::now();
        let mut running: Vec<_> = (0..10).map(|_| load.admit().unwrap()).collect();
        load.waited(ms(6), at(t, 0));
        load.waited(ms(6), at(t, 100));
        assert_eq!(load.limit(), Some(8));
        // Ten still run: the eleventh is refused, and so is a ninth.
        assert_eq!(load.admit().unwrap_err(), Shed { limit: 8 });
        running.truncate(8);
        assert!(load.admit().is_err());
        running.truncate(7);
        running.push(load.admit().unwrap());
        // A calm interval in which the limit refused someone: it rises.
        load.waited(ms(1), at(t, 150));
        assert_eq!(load.limit(), Some(8));
        load.waited(ms(1), at(t, 200));
        assert_eq!(load.limit(), Some(9));
        running.push(load.admit().unwrap());
        // A calm interval in which nobody was refused: the limit goes.
        load.waited(ms(1), at(t, 300));
        assert_eq!(load.limit(), None);
        assert_eq!(load.in_flight.load(Ordering::Relaxed), 9);
        drop(running);
        assert_eq!(load.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_second_cut_while_the_first_drains() {
        let load = light();
        let t = Instant::now();
        let mut running: Vec<_> = (0..40).map(|_| load.admit().unwrap()).collect();
        load.waited(ms(25), at(t, 0));
        load.waited(ms(25), at(t, 100));
        assert_eq!(load.limit(), Some(8));
        // Forty still queue, waiting long: the limit holds.
        load.waited(ms(40), at(t, 110));
        load.waited(ms(40), at(t, 210));
        assert_eq!(load.limit(), Some(8));
        // Once within the limit, long waits cut again.
        running.truncate(8);
        load.waited(ms(10), at(t, 220));
        load.waited(ms(10), at(t, 320));
        assert_eq!(load.limit(), Some(4));
        drop(running);
    }

    #[test]
    fn a_refusal_after_a_quiet_interval_raises_the_limit() {
        // The function's work now sleeps: no waits arrive, refusals alone
        // must review the limit.
        let load = light();
        let t = Instant::now();
        let running: Vec<_> = (0..2).map(|_| load.admit().unwrap()).collect();
        load.waited(ms(20), at(t, 0));
        load.waited(ms(20), at(t, 100));
        assert_eq!(load.limit(), Some(1));
        // Refusals at once do not raise it; one after a calm interval does.
        assert!(load.admit().is_err());
        load.window.lock().unwrap().calm_since = Instant::now().checked_sub(INTERVAL).unwrap();
        // Raised to 2 by the refusal: still full.
        assert!(load.admit().is_err());
        load.window.lock().unwrap().calm_since = Instant::now().checked_sub(INTERVAL).unwrap();
        // 3 now: this one gets in.
        let third = load.admit().unwrap();
        assert_eq!(load.limit(), Some(3));
        drop((running, third));
    }

    #[test]
    fn the_limit_never_falls_below_one() {
        let load = light();
        let t = Instant::now();
        load.waited(ms(20), at(t, 0));
        load.waited(ms(20), at(t, 100));
        assert_eq!(load.limit(), Some(1));
        assert!(load.admit().is_ok());
    }
}
