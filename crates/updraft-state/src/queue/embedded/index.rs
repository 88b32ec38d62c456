//! The in-memory index of every message in `queues.redb`: per queue, the
//! messages waiting (by when they become visible) and the leases, with small
//! payloads kept inline. Only committed changes reach it.

use super::*;

/// Every message in the database, and the leases.
#[derive(Default)]
pub(super) struct Index {
    pub(super) messages: HashMap<u128, Entry>,
    /// Each queue's id is shared by its entries.
    pub(super) queues: HashMap<Arc<QueueId>, QueueIndex>,
    /// Bytes of the payloads held in `messages`.
    pub(super) inline_bytes: usize,
}

/// A payload as it reaches the index: its size, and the bytes when small
/// enough to keep.
pub(super) struct Payload {
    pub(super) len: usize,
    pub(super) bytes: Option<Arc<[u8]>>,
}

impl Payload {
    pub(super) fn of(payload: &[u8]) -> Payload {
        Payload {
            len: payload.len(),
            bytes: (payload.len() <= INLINE_PAYLOAD_MAX).then(|| Arc::from(payload)),
        }
    }
}

pub(super) struct Entry {
    pub(super) queue: Arc<QueueId>,
    pub(super) attempts: u32,
    pub(super) enqueued_ms: u64,
    pub(super) visible_ms: u64,
    pub(super) last_error: Option<String>,
    pub(super) payload_bytes: usize,
    /// The payload, when the index keeps it.
    pub(super) payload: Option<Arc<[u8]>>,
    /// (leased since, lease ends)
    pub(super) lease: Option<(u64, u64)>,
}

#[derive(Default)]
pub(super) struct QueueIndex {
    /// (visible from, id) of waiting messages.
    pub(super) waiting: BTreeSet<(u64, u128)>,
    /// (lease ends, id) of messages in flight.
    pub(super) leased: BTreeSet<(u64, u128)>,
    /// Woken when a message becomes visible.
    pub(super) ready: Arc<Notify>,
}

/// A leased message, as the index knows it.
pub(super) struct Taken {
    pub(super) id: u128,
    pub(super) attempts: u32,
    pub(super) enqueued_ms: u64,
    pub(super) last_error: Option<String>,
    pub(super) payload: Option<Arc<[u8]>>,
}

pub(super) enum Leased {
    Some(Vec<Taken>),
    /// When something may become visible, and whom to wait on.
    Nothing(Option<u64>, Option<Arc<Notify>>),
}

impl Index {
    pub(super) fn add(&mut self, queue: Arc<QueueId>, id: u128, stored: Stored, payload: Payload) {
        let bytes = payload
            .bytes
            .filter(|_| self.inline_bytes + payload.len <= INLINE_BYTES_MAX);
        if bytes.is_some() {
            self.inline_bytes += payload.len;
        }
        let queue = match self.queues.get_key_value(&queue) {
            Some((known, _)) => known.clone(),
            None => queue,
        };
        let q = self.queues.entry(queue.clone()).or_default();
        q.waiting.insert((stored.visible_ms, id));
        q.ready.notify_waiters();
        self.messages.insert(
            id,
            Entry {
                queue,
                attempts: stored.attempts,
                enqueued_ms: stored.enqueued_ms,
                visible_ms: stored.visible_ms,
                last_error: stored.last_error,
                payload_bytes: payload.len,
                payload: bytes,
                lease: None,
            },
        );
    }

    /// Forgets message `id`; returns its queue.
    pub(super) fn remove(&mut self, id: u128) -> Option<Arc<QueueId>> {
        let entry = self.messages.remove(&id)?;
        if entry.payload.is_some() {
            self.inline_bytes -= entry.payload_bytes;
        }
        if let Some(q) = self.queues.get_mut(&entry.queue) {
            q.waiting.remove(&(entry.visible_ms, id));
            if let Some((_, until)) = entry.lease {
                q.leased.remove(&(until, id));
            }
        }
        Some(entry.queue)
    }

    /// Expired leases make their messages visible again.
    pub(super) fn expire_leases(&mut self, queue: &QueueId, now: u64) {
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        while let Some(&(until, id)) = q.leased.first() {
            if until > now {
                break;
            }
            q.leased.pop_first();
            if let Some(entry) = self.messages.get_mut(&id) {
                entry.lease = None;
                entry.visible_ms = until;
                q.waiting.insert((until, id));
            }
        }
    }

    /// The message, if it is in flight in `queue`.
    pub(super) fn leased(&self, queue: &QueueId, id: u128) -> Result<&Entry, QueueError> {
        match self.messages.get(&id) {
            Some(entry) if *entry.queue == *queue && entry.lease.is_some() => Ok(entry),
            _ => Err(QueueError::NotInFlight {
                queue: queue.to_string(),
                id: Uuid::from_u128(id),
            }),
        }
    }
}
