//! The writer thread: every change (send, ack, retry, move, redrive) is
//! committed here, many per transaction, before the index learns of it.

use super::*;

/// The writer thread: commits what is queued in one transaction per round,
/// and sweeps expired outcomes now and then, until the store is dropped.
pub(super) fn write_loop(shared: &Shared, changes: &std::sync::mpsc::Receiver<Change>) {
    let mut last_sweep = None;
    // Kept between rounds: growing them anew each round was a page fault
    // storm under load.
    let mut batch = Vec::new();
    let mut index_changes = Vec::new();
    // Whether a commit without a sync awaits one.
    let mut unsynced = false;
    loop {
        let wait = if shared.file.is_failed() {
            // Trying to reopen the file needs no change to come.
            RETRY_INTERVAL
        } else if outcomes_over(shared) {
            // Trimming outcomes in bites: the next one soon, idle or not.
            OVER_LIMIT_SWEEP_AFTER
        } else if unsynced {
            LAZY_SYNC_AFTER
        } else {
            SWEEP_INTERVAL
        };
        let first = match changes.recv_timeout(wait) {
            Ok(change) => Some(change),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // Closing: the last acks, synced.
                if !lock(&shared.acked).pending.is_empty()
                    && let Err(e) = writable(shared)
                        .and_then(|db| commit(shared, &db, &[], false, &mut index_changes))
                {
                    tracing::warn!(
                        "queue acks not written (they will be delivered again): {}",
                        updraft_core::error::chain(&e)
                    );
                } else if unsynced {
                    sync(shared);
                }
                return;
            }
        };
        if first.is_none() && unsynced {
            sync(shared);
            unsynced = false;
        }
        if first.is_none() && shared.file.is_failed() {
            let _ = writable(shared);
        }
        if last_sweep.is_none_or(|at: std::time::Instant| at.elapsed() >= SWEEP_INTERVAL)
            || outcomes_over(shared)
        {
            if let Err(e) = sweep(shared) {
                shared.file.failed(&e);
                tracing::warn!(
                    "could not delete expired queue outcomes: {}",
                    updraft_core::error::chain(&e)
                );
            }
            last_sweep = Some(std::time::Instant::now());
        }
        let Some(first) = first else { continue };
        batch.clear();
        batch.push(first);
        let gather_until = std::time::Instant::now() + LAZY_GATHER;
        loop {
            while batch.len() < GROUP_COMMIT_OPS_MAX {
                match changes.try_recv() {
                    Ok(change) => batch.push(change),
                    Err(_) => break,
                }
            }
            let left = gather_until.saturating_duration_since(std::time::Instant::now());
            if batch.len() >= GROUP_COMMIT_OPS_MAX || !is_lazy(&batch) || left.is_zero() {
                break;
            }
            // Only acks so far: wait a little for more, or for a change
            // that needs a synced commit anyway. (Acks add to the buffer
            // without waking the writer again, so this mostly sleeps.)
            match changes.recv_timeout(left) {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        let lazy = is_lazy(&batch);
        let committed =
            writable(shared).and_then(|db| commit(shared, &db, &batch, lazy, &mut index_changes));
        match committed {
            Ok(results) => {
                unsynced = lazy;
                lock(&shared.acked).committed();
                let mut index = lock(&shared.index);
                for change in index_changes.drain(..) {
                    match change {
                        IndexChange::Add(queue, id, stored, payload) => {
                            index.add(queue, id, stored, payload);
                        }
                        IndexChange::Remove(id) => {
                            index.remove(id);
                        }
                    }
                }
                drop(index);
                for (change, result) in batch.drain(..).zip(results) {
                    let _ = change.reply.send(result);
                }
            }
            Err(e) => {
                shared.file.failed(&e);
                lock(&shared.acked).uncommitted();
                index_changes.clear();
                for change in batch.drain(..) {
                    let _ = change.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

pub(super) type Results = Vec<Result<Done, QueueError>>;

/// Acks and retries may wait for the next sync (see the module doc).
pub(super) fn is_lazy(batch: &[Change]) -> bool {
    batch
        .iter()
        .all(|c| matches!(c.op, Op::Acks | Op::Retry(..) | Op::Release(..)))
}

/// Makes earlier unsynced commits durable with an empty synced one.
pub(super) fn sync(shared: &Shared) {
    let synced = writable(shared).and_then(|db| {
        db.begin_write()
            .map_err(storage)
            .and_then(|txn| txn.commit().map_err(storage))
    });
    if let Err(e) = synced {
        shared.file.failed(&e);
        tracing::warn!(
            "queue acks not synced (they may be delivered again): {}",
            updraft_core::error::chain(&e)
        );
    }
}

/// Applies `batch` in order in one transaction, durable unless `lazy`.
/// Returns each change's result; adds to `index_changes` what the index
/// must do once it is committed.
pub(super) fn commit(
    shared: &Shared,
    db: &Database,
    batch: &[Change],
    lazy: bool,
    index_changes: &mut Vec<IndexChange>,
) -> Result<Results, QueueError> {
    let mut txn = db.begin_write().map_err(storage)?;
    if lazy {
        txn.set_durability(redb::Durability::None)
            .map_err(storage)?;
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut outcome_bytes = None;
    {
        let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
        let mut outcomes = txn.open_table(OUTCOMES).map_err(storage)?;
        let mut keys = txn.open_table(IDEMPOTENCY).map_err(storage)?;
        let mut channels = txn.open_table(CHANNELS).map_err(storage)?;
        let now = now_ms();
        // Acks first: the index has already forgotten their messages. They
        // stay answerable from `committing` until this commit is visible.
        let acks = {
            let mut acked = lock(&shared.acked);
            let spare = std::mem::take(&mut acked.spare);
            let acks = Arc::new(std::mem::replace(&mut acked.pending, spare));
            acked.committing = Some(acks.clone());
            acks
        };
        let mut added = 0;
        for ack in acks.iter() {
            let key = (ack.queue.owner.as_str(), ack.queue.name.as_str(), ack.id);
            messages.remove(key).map_err(storage)?;
            outcomes
                .insert(ack.id, ack.outcome.as_slice())
                .map_err(storage)?;
            added += outcome_size(&ack.outcome);
        }
        if added > 0 {
            let total = shared.outcome_bytes.load(Ordering::Relaxed) + added;
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(OUTCOME_BYTES, total).map_err(storage)?;
            outcome_bytes = Some(total);
        }
        // Removed earlier in this batch: the index does not know yet.
        let mut gone: Vec<u128> = Vec::new();
        let index = lock(&shared.index);
        for change in batch {
            let queue = &change.queue;
            let leased = |id: Uuid, gone: &[u128]| -> Result<(), QueueError> {
                index.leased(queue, id.as_u128())?;
                if gone.contains(&id.as_u128()) {
                    return Err(QueueError::NotInFlight {
                        queue: queue.to_string(),
                        id,
                    });
                }
                Ok(())
            };
            let result = match &change.op {
                Op::Send(batches) => {
                    let mut sent = Vec::with_capacity(batches.len());
                    for (queue, new) in batches {
                        let accepted =
                            send(&mut messages, &mut keys, queue, new, now, index_changes)?;
                        sent.push(accepted);
                    }
                    Ok(Done::Sent(sent))
                }
                Op::CreateChannel(channel) => {
                    let key = (queue.owner.as_str(), channel.name.as_str());
                    let existing: Option<Channel> = channels
                        .get(key)
                        .map_err(storage)?
                        .and_then(|v| serde_json::from_slice(v.value()).ok());
                    match existing {
                        Some(old) if old.kind != channel.kind => Err(QueueError::ChannelConflict {
                            name: channel.name.clone(),
                            existing: old.kind,
                        }),
                        old => {
                            let mut channel = channel.clone();
                            if let Some(old) = old {
                                channel.created_ms = old.created_ms;
                            }
                            let json = serde_json::to_vec(&channel).map_err(storage)?;
                            channels.insert(key, json.as_slice()).map_err(storage)?;
                            Ok(Done::Channel(channel))
                        }
                    }
                }
                Op::DeleteChannel => {
                    let key = (queue.owner.as_str(), queue.name.as_str());
                    Ok(Done::Bool(channels.remove(key).map_err(storage)?.is_some()))
                }
                Op::Purge => {
                    let all: Vec<u128> = index
                        .queues
                        .get(queue)
                        .map(|q| {
                            q.waiting
                                .iter()
                                .chain(&q.leased)
                                .map(|&(_, id)| id)
                                .filter(|id| !gone.contains(id))
                                .collect()
                        })
                        .unwrap_or_default();
                    for &id in &all {
                        let key = (queue.owner.as_str(), queue.name.as_str(), id);
                        messages.remove(key).map_err(storage)?;
                        index_changes.push(IndexChange::Remove(id));
                        gone.push(id);
                    }
                    Ok(Done::Count(all.len()))
                }
                Op::Acks => Ok(Done::Unit),
                // A retry goes back to its own queue later; a move (to the
                // dead letters) to another queue now. Both count the
                // attempt; a release (not run) goes back uncounted.
                Op::Retry(id, _, _) | Op::Move(id, _, _) | Op::Release(id, _) => leased(*id, &gone)
                    .and_then(|()| {
                        let (to, visible, error, counted) = match &change.op {
                            Op::Retry(_, delay, error) => (
                                queue,
                                now.saturating_add(millis(*delay)),
                                error.as_str(),
                                true,
                            ),
                            Op::Move(_, to, error) => (to, now, error.as_str(), true),
                            Op::Release(_, delay) => {
                                (queue, now.saturating_add(millis(*delay)), "", false)
                            }
                            _ => (queue, now, "", true),
                        };
                        let next = |attempts: u32| attempts.saturating_add(u32::from(counted));
                        if let Some((stored, payload)) =
                            requeue(&mut messages, queue, *id, to, visible, error, &next)?
                        {
                            index_changes.push(IndexChange::Remove(id.as_u128()));
                            index_changes.push(IndexChange::Add(
                                Arc::new(to.clone()),
                                id.as_u128(),
                                stored,
                                payload,
                            ));
                            gone.push(id.as_u128());
                        }
                        Ok(Done::Unit)
                    }),
                Op::Redrive(to) => {
                    let waiting: Vec<u128> = index
                        .queues
                        .get(queue)
                        .map(|q| {
                            q.waiting
                                .iter()
                                .map(|&(_, id)| id)
                                .filter(|id| !gone.contains(id))
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut moved = 0;
                    for id in waiting {
                        let id = Uuid::from_u128(id);
                        if let Some((stored, payload)) =
                            requeue(&mut messages, queue, id, to, now, "", &|_| 0)?
                        {
                            index_changes.push(IndexChange::Remove(id.as_u128()));
                            index_changes.push(IndexChange::Add(
                                Arc::new(to.clone()),
                                id.as_u128(),
                                stored,
                                payload,
                            ));
                            gone.push(id.as_u128());
                            moved += 1;
                        }
                    }
                    Ok(Done::Count(moved))
                }
            };
            results.push(result);
        }
    }
    txn.commit().map_err(storage)?;
    if let Some(total) = outcome_bytes {
        // Only the writer changes it.
        shared.outcome_bytes.store(total, Ordering::Relaxed);
    }
    Ok(results)
}

/// The database to write to. After a failure, once the file is reopened,
/// the index and the outcome count are brought to what it holds: the
/// unsynced rounds before the failure are gone from it, so a message acked
/// in them is there again and is delivered again (at least once), while
/// acks still waiting in the buffer stay waiting.
pub(super) fn writable(shared: &Shared) -> Result<Arc<Database>, QueueError> {
    let writable = shared.file.writable().map_err(QueueError::Storage)?;
    if writable.reopened {
        let mended = mend(shared, &writable.db);
        if let Err(e) = &mended {
            shared.file.failed(e);
        }
        mended?;
    }
    Ok(writable.db)
}

fn mend(shared: &Shared, db: &Database) -> Result<(), QueueError> {
    let txn = db.begin_read().map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    let bytes = meta
        .get(OUTCOME_BYTES)
        .map_err(storage)?
        .map_or(0, |v| v.value());
    shared.outcome_bytes.store(bytes, Ordering::Relaxed);
    let table = txn.open_table(MESSAGES).map_err(storage)?;
    let mut index = lock(&shared.index);
    let acked = lock(&shared.acked);
    let mut found = 0;
    for entry in table.iter().map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let (owner, name, id) = key.value();
        if index.messages.contains_key(&id) || acked.outcome(id).is_some() {
            continue;
        }
        let Some((stored, payload)) = Stored::decode(value.value()) else {
            continue;
        };
        index.add(
            Arc::new(QueueId::new(owner, name)),
            id,
            stored,
            Payload::of(payload),
        );
        found += 1;
    }
    if found > 0 {
        tracing::info!("{found} queue messages acked before the failure will be delivered again");
    }
    Ok(())
}

pub(super) type KeysTable<'t> = Table<'t, (&'static str, &'static str, &'static str), (u128, u64)>;

/// Stores new messages of one queue; a known idempotency key gives the
/// first message's id instead.
pub(super) fn send(
    messages: &mut MessagesTable<'_>,
    keys: &mut KeysTable<'_>,
    queue: &QueueId,
    new: &[(Uuid, NewMessage)],
    now: u64,
    index_changes: &mut Vec<IndexChange>,
) -> Result<Vec<Accepted>, QueueError> {
    let mut accepted = Vec::with_capacity(new.len());
    let shared = Arc::new(queue.clone());
    // Stored encoded here, reused for each message.
    let mut value = Vec::new();
    for (id, message) in new {
        if let Some(key) = &message.idempotency_key {
            let k = (queue.owner.as_str(), queue.name.as_str(), key.as_str());
            let seen = keys.get(k).map_err(storage)?.map(|v| v.value());
            if let Some((first, sent)) = seen
                && now.saturating_sub(sent) < millis(RETENTION)
            {
                accepted.push(Accepted {
                    id: Uuid::from_u128(first),
                    duplicate: true,
                });
                continue;
            }
            keys.insert(k, (id.as_u128(), now)).map_err(storage)?;
        }
        let stored = Stored {
            attempts: 0,
            enqueued_ms: now,
            visible_ms: now,
            last_error: None,
        };
        let key = (queue.owner.as_str(), queue.name.as_str(), id.as_u128());
        value.clear();
        stored.encode_into(&mut value, &message.payload);
        messages.insert(key, value.as_slice()).map_err(storage)?;
        index_changes.push(IndexChange::Add(
            shared.clone(),
            id.as_u128(),
            stored,
            Payload::of(&message.payload),
        ));
        accepted.push(Accepted {
            id: *id,
            duplicate: false,
        });
    }
    Ok(accepted)
}

pub(super) type MessagesTable<'t> = Table<'t, (&'static str, &'static str, u128), &'static [u8]>;

/// Rewrites a message into `to` (possibly its own queue), visible from
/// `visible`, with its attempts counted by `next` and `error` as its last
/// error (kept when empty). `None` if it is not stored.
pub(super) fn requeue(
    messages: &mut MessagesTable<'_>,
    from: &QueueId,
    id: Uuid,
    to: &QueueId,
    visible: u64,
    error: &str,
    next: &dyn Fn(u32) -> u32,
) -> Result<Option<(Stored, Payload)>, QueueError> {
    let key = (from.owner.as_str(), from.name.as_str(), id.as_u128());
    let Some(old) = messages.remove(key).map_err(storage)? else {
        return Ok(None);
    };
    let Some((mut stored, payload)) = Stored::decode(old.value()) else {
        return Err(QueueError::storage(format!(
            "message {id} in queue {from} is unreadable: queues.redb is damaged"
        )));
    };
    stored.attempts = next(stored.attempts);
    stored.visible_ms = visible;
    if !error.is_empty() {
        stored.last_error = Some(error.to_string());
    }
    let value = stored.encode(payload);
    let payload = Payload::of(payload);
    drop(old);
    let key = (to.owner.as_str(), to.name.as_str(), id.as_u128());
    messages.insert(key, value.as_slice()).map_err(storage)?;
    Ok(Some((stored, payload)))
}
