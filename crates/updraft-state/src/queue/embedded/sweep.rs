//! Sweeps of `queues.redb`: outcomes and idempotency keys past
//! [`RETENTION`], and the oldest outcomes past [`OUTCOME_BYTES_MAX`].

use super::*;

/// Whether the outcomes have grown a quarter past their limit: swept now,
/// not at the next interval.
pub(super) fn outcomes_over(shared: &Shared) -> bool {
    let max = shared.outcome_bytes_max.load(Ordering::Relaxed);
    shared.outcome_bytes.load(Ordering::Relaxed) > max.saturating_add(max / 4)
}

/// Deletes outcomes and idempotency keys older than [`RETENTION`], and the
/// oldest outcomes past the byte limit.
pub(super) fn sweep(shared: &Shared) -> Result<(), QueueError> {
    let cutoff = now_ms().saturating_sub(millis(RETENTION));
    let max = shared.outcome_bytes_max.load(Ordering::Relaxed);
    let mut total = shared.outcome_bytes.load(Ordering::Relaxed);
    let txn = writable(shared)?.begin_write().map_err(storage)?;
    {
        // A UUIDv7 starts with its creation time in ms: older ids sort first.
        let first_kept = u128::from(cutoff) << 80;
        let mut outcomes = txn.open_table(OUTCOMES).map_err(storage)?;
        let mut removed = 0;
        outcomes
            .retain_in(..first_kept, |_, value| {
                removed += outcome_size(value);
                false
            })
            .map_err(storage)?;
        total = total.saturating_sub(removed);
        // A bounded bite per sweep: a data dir from before the limit may
        // hold gigabytes of outcomes, and the writer has rounds to run.
        for _ in 0..SWEEP_OUTCOMES_MAX {
            if total <= max {
                break;
            }
            let Some((_, value)) = outcomes.pop_first().map_err(storage)? else {
                total = 0;
                break;
            };
            total = total.saturating_sub(outcome_size(value.value()));
        }
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(OUTCOME_BYTES, total).map_err(storage)?;
        let mut keys = txn.open_table(IDEMPOTENCY).map_err(storage)?;
        keys.retain(|_, (_, sent)| sent >= cutoff)
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    shared.outcome_bytes.store(total, Ordering::Relaxed);
    Ok(())
}
