//! Small statistics over repeated measurements: the median that aggregates
//! wrk rounds, and the nearest-rank percentiles of the cold paths.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Percentiles of one repeated measurement, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many samples; with few (quick mode), p99 is simply the largest.
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Summary {
    /// `None` for no samples: a measurement that did not happen has no p50.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        // A tenth of a microsecond is finer than anything measured here and
        // keeps the JSON readable.
        let round = |x: f64| (x * 10.0).round() / 10.0;
        if us.is_empty() {
            return None;
        }
        us.sort_by(f64::total_cmp);
        Some(Summary {
            n: us.len(),
            p50_us: round(nearest_rank(&us, 50.0)),
            p99_us: round(nearest_rank(&us, 99.0)),
            min_us: round(us[0]),
            max_us: round(us[us.len() - 1]),
            mean_us: round(us.iter().sum::<f64>() / us.len() as f64),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples: always one of the
/// samples, never an interpolation between two.
fn nearest_rank(sorted: &[f64], percentile: f64) -> f64 {
    let rank = ((percentile / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (the mean of the middle two for an even count); 0 for none.
/// Rounds of a load point are aggregated by it so one disturbed round (the
/// machine is shared) does not move the result.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!((s.n, s.p50_us, s.p99_us), (100, 50.0, 99.0));
        assert_eq!((s.min_us, s.max_us, s.mean_us), (1.0, 100.0, 50.5));

        let few = Summary::of(&[Duration::from_micros(7), Duration::from_micros(3)]).unwrap();
        assert_eq!((few.p50_us, few.p99_us), (3.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
