//! Metering: what each function used. For now an in-memory tally per function
//! (invocations, failures, billed milliseconds, peak memory) fed by the
//! scheduler from every invocation report; durable usage records, prices,
//! bills and budgets build on this seam.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Usage of one function since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub invocations: u64,
    pub failures: u64,
    /// Wall time rounded up to whole milliseconds per invocation, summed.
    pub billed_ms: u64,
    pub memory_peak_bytes: u64,
}

/// One finished invocation, as the meter sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub duration: Duration,
    pub ok: bool,
    pub memory_peak_bytes: u64,
}

/// Billed duration: wall time rounded up to the next millisecond (at least 1).
pub fn billed_ms(duration: Duration) -> u64 {
    let micros = duration.as_micros() as u64;
    micros.div_ceil(1000).max(1)
}

#[derive(Default)]
pub struct Meter {
    usage: Mutex<HashMap<String, Usage>>,
}

impl Meter {
    pub fn record(&self, function: &str, sample: Sample) {
        let Ok(mut usage) = self.usage.lock() else {
            return;
        };
        // Look up before inserting: the hot path must not allocate the key.
        if !usage.contains_key(function) {
            usage.insert(function.to_string(), Usage::default());
        }
        let Some(entry) = usage.get_mut(function) else {
            return;
        };
        entry.invocations += 1;
        entry.failures += u64::from(!sample.ok);
        entry.billed_ms += billed_ms(sample.duration);
        entry.memory_peak_bytes = entry.memory_peak_bytes.max(sample.memory_peak_bytes);
    }

    pub fn usage(&self, function: &str) -> Usage {
        self.usage
            .lock()
            .ok()
            .and_then(|u| u.get(function).copied())
            .unwrap_or_default()
    }

    pub fn forget(&self, function: &str) {
        if let Ok(mut usage) = self.usage.lock() {
            usage.remove(function);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billed_time_rounds_up() {
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1000)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1001)), 2);
        let meter = Meter::default();
        let sample = |ms, ok| Sample {
            duration: Duration::from_millis(ms),
            ok,
            memory_peak_bytes: ms,
        };
        meter.record("f", sample(3, true));
        meter.record("f", sample(5, false));
        assert_eq!(
            meter.usage("f"),
            Usage {
                invocations: 2,
                failures: 1,
                billed_ms: 8,
                memory_peak_bytes: 5
            }
        );
    }
}
