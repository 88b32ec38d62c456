//! The embedded queue backend: one redb database, `queues.redb`, in the
//! data dir, and an in-memory index of every message in it.
//!
//! The index also holds small payloads ([`INLINE_PAYLOAD_MAX`], up to
//! [`INLINE_BYTES_MAX`] in all), so leasing them reads nothing from disk.
//!
//! Changes (send, ack, retry, move, redrive) go to one writer thread, which
//! commits everything queued so far in one fsynced transaction (group
//! commit, as the key-value store's `disk` level) and only then updates the
//! index and answers, so a consumer never sees a message that is not yet
//! durable. Leases live only in the index: after a crash, every message
//! that was in flight is visible again (at least once).
//!
//! An ack leaves the index at once and is answered without waiting for
//! the writer: the writer deletes acked messages (and keeps their outcomes)
//! in its next round, many at a time. A round of only acks and retries is
//! committed without a sync: losing it in a power cut or crash only
//! delivers those messages again, which at least once allows, and the sync
//! it saves was most of a consumer's cost. The next synced commit makes it
//! durable; an idle writer syncs within [`LAZY_SYNC_AFTER`], and a closing
//! one before it stops.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

use crate::redb_file::{RETRY_INTERVAL, RedbFile};
use tokio::sync::{Notify, oneshot};

use super::{
    Accepted, Channel, Message, MessageInfo, MessageState, NewMessage, QueueError, QueueId,
    QueueStats, QueueStore, RETENTION, Uuid, check_channel, check_message, now_ms,
};

mod codec;
mod index;
mod sweep;
mod writer;

use codec::*;
use index::*;
use sweep::*;
use writer::*;

/// The stored forms of a message and of an outcome, reachable by the fuzz
/// target `queue_codec` (cargo feature `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::codec::{self, Stored};

    /// A message's header: attempts, enqueued ms, visible ms, last error.
    pub type Header = (u32, u64, u64, Option<String>);

    /// A message as `queues.redb` stores it.
    pub fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
        let (attempts, enqueued_ms, visible_ms, last_error) = header.clone();
        Stored {
            attempts,
            enqueued_ms,
            visible_ms,
            last_error,
        }
        .encode(payload)
    }

    /// The header and payload of a stored message.
    pub fn decode(bytes: &[u8]) -> Option<(Header, &[u8])> {
        let (stored, payload) = Stored::decode(bytes)?;
        let header = (
            stored.attempts,
            stored.enqueued_ms,
            stored.visible_ms,
            stored.last_error,
        );
        Some((header, payload))
    }

    /// An outcome as stored for `owner`.
    pub fn encode_outcome(owner: &str, outcome: &[u8]) -> Vec<u8> {
        codec::encode_outcome(owner, outcome)
    }

    /// The outcome `owner` may see in a stored one.
    pub fn owned_outcome(value: &[u8], owner: &str) -> Option<Vec<u8>> {
        match codec::owned_outcome(value, owner)? {
            super::MessageState::Done { outcome } => Some(outcome),
            _ => None,
        }
    }

    /// The longest last error kept; a longer one is cut to this (at a
    /// character boundary).
    pub const ERROR_BYTES_MAX: usize = codec::ERROR_BYTES_MAX;
}

/// (owner, queue, id) → [`Stored`] header and payload.
const MESSAGES: TableDefinition<(&str, &str, u128), &[u8]> = TableDefinition::new("messages");
/// id → owner (`u16` length + bytes) and the consumer's outcome.
const OUTCOMES: TableDefinition<u128, &[u8]> = TableDefinition::new("outcomes");
/// (owner, name) → a named queue or topic ([`Channel`] as JSON).
const CHANNELS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("channels");
/// (owner, queue, idempotency key) → (id, sent ms).
const IDEMPOTENCY: TableDefinition<(&str, &str, &str), (u128, u64)> =
    TableDefinition::new("idempotency");
/// Bookkeeping: "outcome_bytes", the bytes the outcomes table holds.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OUTCOME_BYTES: &str = "outcome_bytes";
/// Most bytes of outcomes kept (values and keys). Past it the oldest go
/// first, before their [`RETENTION`]: at tens of thousands of events a
/// second, a day of outcomes would not fit on a disk.
pub const OUTCOME_BYTES_MAX: u64 = 1 << 30;
/// Most outcomes one sweep deletes for the byte limit.
const SWEEP_OUTCOMES_MAX: usize = 100_000;
/// How soon the next sweep comes while outcomes are still past the limit.
const OVER_LIMIT_SWEEP_AFTER: Duration = Duration::from_millis(100);
/// Most changes committed in one transaction.
const GROUP_COMMIT_OPS_MAX: usize = 4096;
/// How often expired outcomes and idempotency keys are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Longest an unsynced round of acks waits for a synced commit.
const LAZY_SYNC_AFTER: Duration = Duration::from_millis(200);
/// How long a round of only acks and retries waits for more before it is
/// committed: they are answered already, and one commit for many is most
/// of what the writer saves.
const LAZY_GATHER: Duration = Duration::from_millis(5);
/// Largest payload the index keeps in memory (events are mostly small).
const INLINE_PAYLOAD_MAX: usize = 4096;
/// Most payload bytes the index keeps in memory; beyond, leases read them
/// from the database.
const INLINE_BYTES_MAX: usize = 64 << 20;

/// Queues in `queues.redb`.
pub struct EmbeddedQueues {
    shared: Arc<Shared>,
    /// Closing it (on drop) stops the writer.
    changes: Option<std::sync::mpsc::Sender<Change>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// `queues.redb`; after a failed commit it refuses changes until the
    /// writer reopens it (and mends the index: [`writer::writable`]).
    file: RedbFile,
    index: Mutex<Index>,
    /// Acks answered but not yet in the database.
    acked: Mutex<AckBuffer>,
    /// Bytes in the outcomes table, as committed; only the writer changes it.
    outcome_bytes: AtomicU64,
    outcome_bytes_max: AtomicU64,
}

/// An acked message: gone from the index, still in the database.
#[derive(Clone)]
struct Acked {
    queue: Arc<QueueId>,
    id: u128,
    /// The owner (`u16` length + bytes) and the outcome, as stored.
    outcome: Vec<u8>,
}

#[derive(Default)]
struct AckBuffer {
    /// Acked since the writer last took them.
    pending: Vec<Acked>,
    /// Being committed by the writer: still answered from here.
    committing: Option<Arc<Vec<Acked>>>,
    /// The last committed buffer, emptied, for `pending` to reuse.
    spare: Vec<Acked>,
}

impl AckBuffer {
    /// After a failed commit: the acks it held wait for the next one.
    fn uncommitted(&mut self) {
        if let Some(failed) = self.committing.take() {
            let mut again = Arc::try_unwrap(failed).unwrap_or_else(|shared| (*shared).clone());
            again.append(&mut self.pending);
            self.pending = again;
        }
    }

    /// Drops the committed acks, keeping their buffer.
    fn committed(&mut self) {
        if let Some(Ok(mut done)) = self.committing.take().map(Arc::try_unwrap) {
            done.clear();
            self.spare = done;
        }
    }
}

impl AckBuffer {
    fn outcome(&self, id: u128) -> Option<&[u8]> {
        self.pending
            .iter()
            .chain(self.committing.iter().flat_map(|c| c.iter()))
            .find(|a| a.id == id)
            .map(|a| a.outcome.as_slice())
    }
}

enum Op {
    /// To several queues at once (the change's own queue is unused).
    Send(Vec<(QueueId, Vec<(Uuid, NewMessage)>)>),
    /// The change's queue names the channel: (owner, name).
    CreateChannel(Channel),
    DeleteChannel,
    Purge,
    /// Wakes the writer for acks in [`AckBuffer::pending`].
    Acks,
    Retry(Uuid, Duration, String),
    /// Back after the delay, uncounted.
    Release(Uuid, Duration),
    Move(Uuid, QueueId, String),
    Redrive(QueueId),
}

enum Done {
    Sent(Vec<Vec<Accepted>>),
    Channel(Channel),
    Bool(bool),
    Unit,
    Count(usize),
}

struct Change {
    queue: QueueId,
    op: Op,
    reply: oneshot::Sender<Result<Done, QueueError>>,
}

/// What a committed change does to the index.
enum IndexChange {
    Add(Arc<QueueId>, u128, Stored, Payload),
    Remove(u128),
}

impl Shared {
    /// The database to read from.
    fn db(&self) -> Result<Arc<Database>, QueueError> {
        self.file.db().map_err(QueueError::Storage)
    }
}

fn unexpected() -> QueueError {
    QueueError::storage("unexpected writer reply")
}

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Storage(crate::redb_file::failure(e))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EmbeddedQueues {
    pub fn open(data_dir: &Path) -> Result<EmbeddedQueues, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        let file = RedbFile::create(data_dir.join("queues.redb")).map_err(storage)?;
        let db = file.db().map_err(QueueError::Storage)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(MESSAGES).map_err(storage)?;
            txn.open_table(OUTCOMES).map_err(storage)?;
            txn.open_table(IDEMPOTENCY).map_err(storage)?;
            txn.open_table(CHANNELS).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            if meta.get(OUTCOME_BYTES).map_err(storage)?.is_none() {
                // A data dir from before the count was kept: count once.
                tracing::info!("counting the outcomes in queues.redb (once, after an upgrade)");
                let outcomes = txn.open_table(OUTCOMES).map_err(storage)?;
                let mut bytes = 0;
                for entry in outcomes.iter().map_err(storage)? {
                    bytes += outcome_size(entry.map_err(storage)?.1.value());
                }
                meta.insert(OUTCOME_BYTES, bytes).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        let outcome_bytes = {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            meta.get(OUTCOME_BYTES)
                .map_err(storage)?
                .map_or(0, |v| v.value())
        };
        let mut index = Index::default();
        {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(MESSAGES).map_err(storage)?;
            for entry in table.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let (owner, name, id) = key.value();
                let Some((stored, payload)) = Stored::decode(value.value()) else {
                    return Err(QueueError::storage(format!(
                        "message {} in queue {owner}/{name} is unreadable: queues.redb is damaged",
                        Uuid::from_u128(id)
                    )));
                };
                let queue = Arc::new(QueueId::new(owner, name));
                index.add(queue, id, stored, Payload::of(payload));
            }
        }
        drop(db);
        let shared = Arc::new(Shared {
            file,
            index: Mutex::new(index),
            acked: Mutex::default(),
            outcome_bytes: AtomicU64::new(outcome_bytes),
            outcome_bytes_max: AtomicU64::new(OUTCOME_BYTES_MAX),
        });
        let (changes, queue) = std::sync::mpsc::channel();
        let writing = shared.clone();
        let writer = std::thread::Builder::new()
            .name("updraft-queue-writer".into())
            .spawn(move || write_loop(&writing, &queue))
            .map_err(storage)?;
        Ok(EmbeddedQueues {
            shared,
            changes: Some(changes),
            writer: Some(writer),
        })
    }

    /// Tests: keeps at most `bytes` of outcomes, not [`OUTCOME_BYTES_MAX`].
    #[cfg(test)]
    fn set_outcome_bytes_max(&self, bytes: u64) {
        self.shared
            .outcome_bytes_max
            .store(bytes, Ordering::Relaxed);
    }

    async fn change(&self, queue: &QueueId, op: Op) -> Result<Done, QueueError> {
        let (reply, done) = oneshot::channel();
        let stopped = || QueueError::storage("the queue writer has stopped");
        self.changes
            .as_ref()
            .ok_or_else(stopped)?
            .send(Change {
                queue: queue.clone(),
                op,
                reply,
            })
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    /// Leases what is visible now; otherwise says when to look again.
    fn lease(&self, queue: &QueueId, max: usize, lease: Duration) -> Leased {
        let now = now_ms();
        let mut index = lock(&self.shared.index);
        index.expire_leases(queue, now);
        let Index {
            messages, queues, ..
        } = &mut *index;
        let Some(q) = queues.get_mut(queue) else {
            return Leased::Nothing(None, None);
        };
        let mut taken = Vec::new();
        while taken.len() < max {
            match q.waiting.first() {
                Some(&(visible, id)) if visible <= now => {
                    q.waiting.pop_first();
                    let until = now.saturating_add(millis(lease));
                    q.leased.insert((until, id));
                    if let Some(entry) = messages.get_mut(&id) {
                        entry.lease = Some((now, until));
                        taken.push(Taken {
                            id,
                            attempts: entry.attempts,
                            enqueued_ms: entry.enqueued_ms,
                            last_error: entry.last_error.clone(),
                            payload: entry.payload.clone(),
                        });
                    }
                }
                _ => break,
            }
        }
        if taken.is_empty() {
            let next = [q.waiting.first(), q.leased.first()]
                .into_iter()
                .flatten()
                .map(|&(ms, _)| ms)
                .min();
            Leased::Nothing(next, Some(q.ready.clone()))
        } else {
            Leased::Some(taken)
        }
    }

    fn notify_of(&self, queue: &QueueId) -> Arc<Notify> {
        let mut index = lock(&self.shared.index);
        if let Some(q) = index.queues.get(queue) {
            return q.ready.clone();
        }
        index
            .queues
            .entry(Arc::new(queue.clone()))
            .or_default()
            .ready
            .clone()
    }
}

impl Drop for EmbeddedQueues {
    /// Lets the writer finish what is queued and release the database.
    fn drop(&mut self) {
        self.changes = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl QueueStore for EmbeddedQueues {
    async fn send_to_many(
        &self,
        batches: Vec<(QueueId, Vec<NewMessage>)>,
    ) -> Result<Vec<Vec<Accepted>>, QueueError> {
        for (_, messages) in &batches {
            messages.iter().try_for_each(check_message)?;
        }
        let batches = batches
            .into_iter()
            .map(|(queue, messages)| {
                let messages = messages.into_iter().map(|m| (Uuid::now_v7(), m));
                (queue, messages.collect())
            })
            .collect();
        let unused = QueueId::new("", "");
        match self.change(&unused, Op::Send(batches)).await? {
            Done::Sent(accepted) => Ok(accepted),
            _ => Err(unexpected()),
        }
    }

    async fn create_channel(&self, owner: &str, channel: Channel) -> Result<Channel, QueueError> {
        check_channel(&channel)?;
        let id = QueueId::new(owner, channel.name.clone());
        match self.change(&id, Op::CreateChannel(channel)).await? {
            Done::Channel(channel) => Ok(channel),
            _ => Err(unexpected()),
        }
    }

    async fn delete_channel(&self, owner: &str, name: &str) -> Result<bool, QueueError> {
        match self
            .change(&QueueId::new(owner, name), Op::DeleteChannel)
            .await?
        {
            Done::Bool(deleted) => Ok(deleted),
            _ => Err(unexpected()),
        }
    }

    async fn purge(&self, queue: &QueueId) -> Result<usize, QueueError> {
        match self.change(queue, Op::Purge).await? {
            Done::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn channels(&self, owner: &str) -> Result<Vec<Channel>, QueueError> {
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(CHANNELS).map_err(storage)?;
        let mut channels = Vec::new();
        for entry in table.range((owner, "")..).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            if key.value().0 != owner {
                break;
            }
            channels.push(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(channels)
    }

    async fn receive(
        &self,
        queue: &QueueId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a send in between is not missed.
            let ready = self.notify_of(queue);
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (next, _) = match self.lease(queue, max.max(1), lease) {
                Leased::Some(taken) => return self.payloads(queue, taken),
                Leased::Nothing(next, ready) => (next, ready),
            };
            let mut until = deadline;
            if let Some(next) = next {
                let in_ms = next.saturating_sub(now_ms());
                until = until.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn ack(&self, queue: &QueueId, id: Uuid, outcome: Vec<u8>) -> Result<(), QueueError> {
        if self.shared.file.is_failed() {
            // Refused, the message stays leased and comes again after its
            // lease: the writer reopens the file once the disk mends.
            return Err(QueueError::Storage(self.shared.file.refused()));
        }
        let value = encode_outcome(&queue.owner, &outcome);
        let first = {
            let mut index = lock(&self.shared.index);
            index.leased(queue, id.as_u128())?;
            let Some(queue) = index.remove(id.as_u128()) else {
                return Err(unexpected());
            };
            // Still under the index lock: `locate` never misses the message.
            let mut acked = lock(&self.shared.acked);
            acked.pending.push(Acked {
                queue,
                id: id.as_u128(),
                outcome: value,
            });
            acked.pending.len() == 1
        };
        if first {
            // The writer takes every ack pending when it wakes: one wake-up
            // for a run of them. Nobody waits for its answer.
            let (reply, _) = oneshot::channel();
            if let Some(changes) = &self.changes {
                let _ = changes.send(Change {
                    queue: queue.clone(),
                    op: Op::Acks,
                    reply,
                });
            }
        }
        Ok(())
    }

    async fn retry(
        &self,
        queue: &QueueId,
        id: Uuid,
        delay: Duration,
        error: String,
    ) -> Result<(), QueueError> {
        self.change(queue, Op::Retry(id, delay, error))
            .await
            .map(drop)
    }

    async fn release(&self, queue: &QueueId, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        self.change(queue, Op::Release(id, delay)).await.map(drop)
    }

    async fn move_to(
        &self,
        queue: &QueueId,
        id: Uuid,
        to: &QueueId,
        error: String,
    ) -> Result<(), QueueError> {
        self.change(queue, Op::Move(id, to.clone(), error))
            .await
            .map(drop)
    }

    async fn redrive(&self, from: &QueueId, to: &QueueId) -> Result<usize, QueueError> {
        match self.change(from, Op::Redrive(to.clone())).await? {
            Done::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn locate(&self, owner: &str, id: Uuid) -> Result<Option<MessageState>, QueueError> {
        let index = lock(&self.shared.index);
        let pending = lock(&self.shared.acked)
            .outcome(id.as_u128())
            .map(<[u8]>::to_vec);
        if let Some(value) = pending {
            return Ok(owned_outcome(&value, owner));
        }
        if let Some(entry) = index.messages.get(&id.as_u128()) {
            if entry.queue.owner != owner {
                return Ok(None);
            }
            let queue = QueueId::clone(&entry.queue);
            let last_error = entry.last_error.clone();
            return Ok(Some(match entry.lease {
                Some((since_ms, _)) => MessageState::InFlight {
                    queue,
                    attempts: entry.attempts,
                    since_ms,
                    enqueued_ms: entry.enqueued_ms,
                    last_error,
                },
                None => MessageState::Waiting {
                    queue,
                    attempts: entry.attempts,
                    visible_ms: entry.visible_ms,
                    enqueued_ms: entry.enqueued_ms,
                    last_error,
                },
            }));
        }
        drop(index);
        let txn = self.shared.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(OUTCOMES).map_err(storage)?;
        let Some(value) = table.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        Ok(owned_outcome(value.value(), owner))
    }

    async fn stats(&self, queue: &QueueId) -> Result<QueueStats, QueueError> {
        let index = lock(&self.shared.index);
        let Some(q) = index.queues.get(queue) else {
            return Ok(QueueStats::default());
        };
        // Ids are time-ordered (UUIDv7): the smallest is the oldest.
        let oldest = q
            .waiting
            .iter()
            .chain(&q.leased)
            .map(|&(_, id)| id)
            .min()
            .and_then(|id| index.messages.get(&id))
            .map(|e| e.enqueued_ms);
        Ok(QueueStats {
            depth: q.waiting.len() as u64,
            in_flight: q.leased.len() as u64,
            oldest_enqueued_ms: oldest,
        })
    }

    async fn list(&self, queue: &QueueId, limit: usize) -> Result<Vec<MessageInfo>, QueueError> {
        let index = lock(&self.shared.index);
        let Some(q) = index.queues.get(queue) else {
            return Ok(Vec::new());
        };
        Ok(q.waiting
            .iter()
            .take(limit)
            .filter_map(|(_, id)| {
                let e = index.messages.get(id)?;
                Some(MessageInfo {
                    id: Uuid::from_u128(*id),
                    attempts: e.attempts,
                    enqueued_ms: e.enqueued_ms,
                    last_error: e.last_error.clone(),
                    payload_bytes: e.payload_bytes,
                })
            })
            .collect())
    }
}

impl EmbeddedQueues {
    /// The leased messages with their payloads: from the index when it
    /// holds them, else read in one transaction.
    fn payloads(&self, queue: &QueueId, taken: Vec<Taken>) -> Result<Vec<Message>, QueueError> {
        let mut table = None;
        let mut messages = Vec::with_capacity(taken.len());
        for t in taken {
            let payload = match t.payload {
                Some(payload) => payload.to_vec(),
                None => {
                    let table = match &mut table {
                        Some(table) => table,
                        None => {
                            let txn = self.shared.db()?.begin_read().map_err(storage)?;
                            table.insert(txn.open_table(MESSAGES).map_err(storage)?)
                        }
                    };
                    let key = (queue.owner.as_str(), queue.name.as_str(), t.id);
                    let Some(value) = table.get(key).map_err(storage)? else {
                        continue;
                    };
                    Stored::decode(value.value())
                        .map(|(_, payload)| payload.to_vec())
                        .unwrap_or_default()
                }
            };
            messages.push(Message {
                id: Uuid::from_u128(t.id),
                payload,
                attempts: t.attempts,
                enqueued_ms: t.enqueued_ms,
                last_error: t.last_error,
            });
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::queue::PAYLOAD_BYTES_MAX;

    const NOW: Duration = Duration::ZERO;
    const LEASE: Duration = Duration::from_secs(60);

    fn msg(payload: &str) -> NewMessage {
        NewMessage {
            payload: payload.as_bytes().to_vec(),
            idempotency_key: None,
        }
    }

    async fn take(q: &EmbeddedQueues, queue: &QueueId, max: usize) -> Vec<Message> {
        q.receive(queue, max, LEASE, NOW).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn messages_flow_retry_dead_letter_and_redrive() {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let (jobs, dlq) = (
            QueueId::new("acme", "jobs"),
            QueueId::new("acme", "jobs-dlq"),
        );
        let sent = q
            .send(&jobs, vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        assert!(sent.iter().all(|a| !a.duplicate));
        assert_eq!(q.stats(&jobs).await.unwrap().depth, 3);

        // Oldest first; a lease hides them from other consumers.
        let got = take(&q, &jobs, 2).await;
        assert_eq!(
            got.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
            [b"a", b"b"]
        );
        assert_eq!(got[0].id, sent[0].id);
        let stats = q.stats(&jobs).await.unwrap();
        assert_eq!((stats.depth, stats.in_flight), (1, 2));
        assert!(matches!(
            q.locate("acme", got[0].id).await.unwrap(),
            Some(MessageState::InFlight { attempts: 0, .. })
        ));

        // Ack keeps the outcome, for its owner only.
        q.ack(&jobs, got[0].id, b"done a".to_vec()).await.unwrap();
        assert_eq!(
            q.locate("acme", got[0].id).await.unwrap(),
            Some(MessageState::Done {
                outcome: b"done a".to_vec()
            })
        );
        assert_eq!(q.locate("bravo", got[0].id).await.unwrap(), None);
        assert_eq!(q.locate("bravo", sent[2].id).await.unwrap(), None);
        // A second ack of the same message is refused.
        assert!(matches!(
            q.ack(&jobs, got[0].id, vec![]).await,
            Err(QueueError::NotInFlight { .. })
        ));

        // A retry hides the message for its delay and counts the attempt.
        q.retry(&jobs, got[1].id, Duration::from_millis(300), "boom".into())
            .await
            .unwrap();
        let c = take(&q, &jobs, 10).await;
        assert_eq!(c.len(), 1, "b is delayed, c is not");
        assert_eq!(c[0].payload, b"c");
        let b = q
            .receive(&jobs, 10, LEASE, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].attempts, b[0].last_error.as_deref()),
            (1, Some("boom"))
        );

        // Dead letters, listed, then redriven with their attempts reset.
        q.move_to(&jobs, b[0].id, &dlq, "boom again".into())
            .await
            .unwrap();
        q.move_to(&jobs, c[0].id, &dlq, "bad".into()).await.unwrap();
        let dead = q.list(&dlq, 10).await.unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!((dead[0].id, dead[0].attempts), (b[0].id, 2));
        assert_eq!(dead[0].last_error.as_deref(), Some("boom again"));
        assert_eq!(q.stats(&jobs).await.unwrap(), QueueStats::default());
        assert_eq!(q.redrive(&dlq, &jobs).await.unwrap(), 2);
        assert_eq!(q.stats(&dlq).await.unwrap().depth, 0);
        let again = take(&q, &jobs, 10).await;
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|m| m.attempts == 0));
        assert_eq!(again[0].payload, b"b");
    }

    /// The reference model (`queue::model`), several seeds, then a reopen:
    /// what the model last saw is what the reopened store holds.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_embedded_backend_follows_the_reference_model() {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        for seed in 1..=4u64 {
            crate::queue::model::run(&q, &format!("owner{seed}"), seed, 400).await;
        }
        let jobs = QueueId::new("owner1", "jobs");
        let before = (
            q.stats(&jobs).await.unwrap().depth,
            q.list(&jobs, 10_000).await.unwrap(),
        );
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        // Leases do not survive a restart: what was in flight waits again.
        let stats = q.stats(&jobs).await.unwrap();
        assert_eq!(stats.in_flight, 0);
        assert!(stats.depth >= before.0);
        let after = q.list(&jobs, 10_000).await.unwrap();
        for message in &before.1 {
            assert!(after.iter().any(|m| m == message), "{message:?} lost");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idempotency_keys_return_the_first_id() {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let jobs = QueueId::new("acme", "jobs");
        let keyed = |key: &str| NewMessage {
            payload: b"x".to_vec(),
            idempotency_key: Some(key.into()),
        };
        let first = q.send(&jobs, vec![keyed("k1")]).await.unwrap()[0];
        let again = q.send(&jobs, vec![keyed("k1"), keyed("k2")]).await.unwrap();
        assert_eq!(
            again[0],
            Accepted {
                id: first.id,
                duplicate: true
            }
        );
        assert!(!again[1].duplicate);
        // The same key in another queue is another message.
        let other = q
            .send(&QueueId::new("acme", "other"), vec![keyed("k1")])
            .await
            .unwrap();
        assert!(!other[0].duplicate);
        assert_eq!(q.stats(&jobs).await.unwrap().depth, 2);
        // Kept after acking, and across a restart.
        let got = take(&q, &jobs, 1).await;
        q.ack(&jobs, got[0].id, vec![]).await.unwrap();
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        assert_eq!(
            q.send(&jobs, vec![keyed("k1")]).await.unwrap()[0].id,
            first.id
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn acks_answer_at_once_and_are_written_synced_when_idle_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = QueueId::new("acme", "jobs");
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        q.send(&jobs, vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        let got = take(&q, &jobs, 3).await;
        q.ack(&jobs, got[0].id, b"done".to_vec()).await.unwrap();
        // Seen at once, before the writer has it in the database.
        assert_eq!(q.stats(&jobs).await.unwrap().in_flight, 2);
        assert_eq!(
            q.locate("acme", got[0].id).await.unwrap(),
            Some(MessageState::Done {
                outcome: b"done".to_vec()
            })
        );
        assert_eq!(q.locate("other", got[0].id).await.unwrap(), None);
        assert!(matches!(
            q.ack(&jobs, got[0].id, vec![]).await,
            Err(QueueError::NotInFlight { .. })
        ));
        // Idle: the writer syncs the lazy round on its own (run here; only
        // a crash could tell it apart from the sync at close).
        tokio::time::sleep(LAZY_SYNC_AFTER * 3).await;
        q.ack(&jobs, got[1].id, vec![]).await.unwrap();
        // A clean close syncs the last one.
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let left = take(&q, &jobs, 3).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, got[2].id);
        let state = q.locate("acme", got[0].id).await.unwrap();
        assert!(state.is_some(), "the outcome is kept");
    }

    /// Outcomes are kept up to a byte limit: past it the oldest go first,
    /// and the count survives a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn outcomes_past_the_byte_limit_go_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = QueueId::new("acme", "jobs");
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let outcome = vec![b'x'; 84];
        // 2 + 4 ("acme") + 84 bytes, + 16 for the key: 106 each.
        let each = 106;
        q.set_outcome_bytes_max(10 * each);
        let mut acked = Vec::new();
        for _ in 0..4 {
            let sent = q
                .send(&jobs, (0..5).map(|_| msg("m")).collect())
                .await
                .unwrap();
            for m in take(&q, &jobs, 5).await {
                q.ack(&jobs, m.id, outcome.clone()).await.unwrap();
            }
            acked.extend(sent.iter().map(|a| a.id));
            // A synced round after the acks: they are committed, and the
            // limit is checked.
            q.send(&jobs, vec![msg("flush")]).await.unwrap();
            take(&q, &jobs, 1).await;
        }
        q.send(&jobs, vec![msg("flush")]).await.unwrap();
        let mut kept = Vec::new();
        for id in &acked {
            kept.push(q.locate("acme", *id).await.unwrap().is_some());
        }
        let total = q.shared.outcome_bytes.load(Ordering::Relaxed);
        assert!(total <= 10 * each, "{total} bytes of outcomes kept");
        assert!(kept.iter().filter(|k| **k).count() >= 8, "{kept:?}");
        assert!(!kept[0] && kept[19], "the oldest go first: {kept:?}");
        let first_kept = kept.iter().position(|k| *k).unwrap();
        assert!(kept[first_kept..].iter().all(|k| *k), "{kept:?}");
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        assert_eq!(q.shared.outcome_bytes.load(Ordering::Relaxed), total);
        // An idle writer trims too, soon after the limit drops.
        q.set_outcome_bytes_max(3 * each);
        // Waited for, not slept on: a loaded machine runs the sweep late.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = q.shared.outcome_bytes.load(Ordering::Relaxed);
            if left <= 3 * each {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} bytes of outcomes kept"
            );
            tokio::time::sleep(OVER_LIMIT_SWEEP_AFTER).await;
        }
        assert!(q.locate("acme", acked[19]).await.unwrap().is_some());
        assert!(q.locate("acme", acked[15]).await.unwrap().is_none());
    }

    /// Small payloads come from the index, large ones (and any past the
    /// index's budget) from the database: both whole, before and after a
    /// retry to the same queue and a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn small_and_large_payloads_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = QueueId::new("acme", "jobs");
        let large = "x".repeat(INLINE_PAYLOAD_MAX + 1);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        q.send(&jobs, vec![msg("small"), msg(&large)])
            .await
            .unwrap();
        assert_eq!(lock(&q.shared.index).inline_bytes, 5);
        let got = take(&q, &jobs, 5).await;
        let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(payloads, [b"small".as_slice(), large.as_bytes()]);
        for m in &got {
            q.retry(&jobs, m.id, Duration::ZERO, "again".into())
                .await
                .unwrap();
        }
        let again = take(&q, &jobs, 5).await;
        let payloads: Vec<&[u8]> = again.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(payloads, [b"small".as_slice(), large.as_bytes()]);
        q.ack(&jobs, again[0].id, Vec::new()).await.unwrap();
        assert_eq!(lock(&q.shared.index).inline_bytes, 0);
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let after = take(&q, &jobs, 5).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].payload, large.as_bytes());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn expired_leases_and_restarts_make_messages_visible_again() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = QueueId::new("acme", "jobs");
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        q.send(&jobs, vec![msg("a"), msg("b")]).await.unwrap();
        let a = q
            .receive(&jobs, 1, Duration::from_millis(200), NOW)
            .await
            .unwrap();
        // Waits for the lease to end, then gets the message again.
        let b = take(&q, &jobs, 1).await;
        let again = q
            .receive(&jobs, 1, LEASE, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(again[0].id, a[0].id);
        assert_eq!(again[0].attempts, 0);
        drop(q);
        // Both were in flight: after a restart both are waiting.
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        assert_eq!(q.stats(&jobs).await.unwrap().depth, 2);
        let got = take(&q, &jobs, 5).await;
        let mut ids: Vec<_> = got.iter().map(|m| m.id).collect();
        ids.sort();
        let mut want = vec![a[0].id, b[0].id];
        want.sort();
        assert_eq!(ids, want);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn competing_consumers_finish_every_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(EmbeddedQueues::open(dir.path()).unwrap());
        let jobs = QueueId::new("acme", "jobs");
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let (q, jobs) = (q.clone(), jobs.clone());
                tokio::spawn(async move {
                    for i in 0..250 {
                        q.send(&jobs, vec![msg(&format!("{p}-{i}"))]).await.unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let (q, jobs) = (q.clone(), jobs.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let got = q
                            .receive(&jobs, 16, LEASE, Duration::from_millis(500))
                            .await
                            .unwrap();
                        if got.is_empty() {
                            return seen;
                        }
                        for m in got {
                            q.ack(&jobs, m.id, vec![]).await.unwrap();
                            seen.push(String::from_utf8(m.payload).unwrap());
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let mut all = Vec::new();
        for c in consumers {
            all.extend(c.await.unwrap());
        }
        all.sort();
        let mut want: Vec<_> = (0..4)
            .flat_map(|p| (0..250).map(move |i| format!("{p}-{i}")))
            .collect();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(q.stats(&jobs).await.unwrap(), QueueStats::default());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let jobs = QueueId::new("acme", "jobs");
        q.send(&jobs, vec![msg("keep")]).await.unwrap();
        let big = NewMessage {
            payload: vec![0; PAYLOAD_BYTES_MAX + 1],
            idempotency_key: None,
        };
        // One bad message fails the whole send.
        assert_eq!(
            q.send(&jobs, vec![msg("ok"), big]).await,
            Err(QueueError::PayloadTooLarge {
                len: PAYLOAD_BYTES_MAX + 1
            })
        );
        let long_key = NewMessage {
            payload: vec![],
            idempotency_key: Some("k".repeat(257)),
        };
        assert!(matches!(
            q.send(&jobs, vec![long_key]).await,
            Err(QueueError::IdempotencyKeyTooLong { len: 257 })
        ));
        let unknown = Uuid::now_v7();
        for result in [
            q.ack(&jobs, unknown, vec![]).await,
            q.retry(&jobs, unknown, NOW, "x".into()).await,
            q.move_to(&jobs, unknown, &jobs, "x".into()).await,
        ] {
            assert!(matches!(result, Err(QueueError::NotInFlight { .. })));
        }
        // A waiting (not leased) message cannot be acked either.
        let waiting = q.list(&jobs, 10).await.unwrap()[0].id;
        assert!(q.ack(&jobs, waiting, vec![]).await.is_err());
        assert_eq!(q.stats(&jobs).await.unwrap().depth, 1);
        assert_eq!(take(&q, &jobs, 10).await[0].payload, b"keep");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn channels_fan_out_and_purge() {
        use crate::queue::{ChannelKind, VISIBILITY_TIMEOUT_MS_DEFAULT};
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        let channel = |name: &str, kind| Channel {
            name: name.into(),
            kind,
            visibility_timeout_ms: VISIBILITY_TIMEOUT_MS_DEFAULT,
            batch_size: 10,
            created_ms: 1,
        };
        q.create_channel("acme", channel("orders", ChannelKind::Queue))
            .await
            .unwrap();
        q.create_channel("acme", channel("events", ChannelKind::Topic))
            .await
            .unwrap();
        // Updating keeps the creation time; another kind under the name is refused.
        let mut slower = channel("orders", ChannelKind::Queue);
        (slower.batch_size, slower.created_ms) = (5, 99);
        let updated = q.create_channel("acme", slower).await.unwrap();
        assert_eq!((updated.batch_size, updated.created_ms), (5, 1));
        assert_eq!(
            q.create_channel("acme", channel("orders", ChannelKind::Topic))
                .await,
            Err(QueueError::ChannelConflict {
                name: "orders".into(),
                existing: ChannelKind::Queue
            })
        );
        assert!(matches!(
            q.create_channel("acme", channel("Bad Name", ChannelKind::Queue))
                .await,
            Err(QueueError::BadChannel(_))
        ));
        let names = |cs: Vec<Channel>| cs.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(
            names(q.channels("acme").await.unwrap()),
            ["events", "orders"]
        );
        assert!(q.channels("bravo").await.unwrap().is_empty());

        // One commit to several queues.
        let (a, b) = (QueueId::new("acme", "a"), QueueId::new("acme", "b"));
        let sent = q
            .send_to_many(vec![
                (a.clone(), vec![msg("1")]),
                (b.clone(), vec![msg("1"), msg("2")]),
            ])
            .await
            .unwrap();
        assert_eq!((sent[0].len(), sent[1].len()), (1, 2));
        let _leased = take(&q, &b, 1).await;
        assert_eq!(q.purge(&b).await.unwrap(), 2);
        assert_eq!(q.stats(&b).await.unwrap(), QueueStats::default());
        assert_eq!(q.stats(&a).await.unwrap().depth, 1);

        assert!(q.delete_channel("acme", "orders").await.unwrap());
        assert!(!q.delete_channel("acme", "orders").await.unwrap());
        drop(q);
        let q = EmbeddedQueues::open(dir.path()).unwrap();
        assert_eq!(names(q.channels("acme").await.unwrap()), ["events"]);
    }
}
