//! Durable message queues: the [`QueueStore`] trait every backend
//! implements, its types and errors. The scheduler builds async invocation,
//! retries and dead letters on it; named queues and topics come later.
//!
//! A message is accepted only once it is durable. A consumer leases
//! messages ([`QueueStore::receive`]); a lease ends in an ack (the message
//! is done, and its outcome is kept for a while so its id can be looked
//! up), a retry (visible again after a delay, one attempt more), a move to
//! another queue (dead letters), or its expiry (visible again: a consumer
//! that vanished loses nothing). Delivery is at least once.
//!
//! Backends: [`embedded`] (redb on the data dir, the default) and
//! [`NatsQueues`] (JetStream, cluster mode).

pub mod embedded;
#[cfg(test)]
pub(crate) mod model;
mod nats;

use std::time::Duration;

use async_trait::async_trait;
pub use uuid::Uuid;

pub use embedded::EmbeddedQueues;
pub use nats::NatsQueues;

/// Largest message payload, in bytes.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// How long an idempotency key, and a finished message's outcome, are kept
/// (outcomes only up to [`embedded::OUTCOME_BYTES_MAX`] in all).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One queue of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    pub owner: String,
    pub name: String,
}

impl QueueId {
    pub fn new(owner: impl Into<String>, name: impl Into<String>) -> QueueId {
        QueueId {
            owner: owner.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub payload: Vec<u8>,
    /// Sending the same key to the same queue again within [`RETENTION`]
    /// returns the first message's id and sends nothing.
    pub idempotency_key: Option<String>,
}

/// What [`QueueStore::send`] did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub id: Uuid,
    /// The idempotency key was seen before: `id` is the first message's.
    pub duplicate: bool,
}

/// A leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: Uuid,
    pub payload: Vec<u8>,
    /// Deliveries that ended in a retry or a move (0 on the first).
    pub attempts: u32,
    pub enqueued_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting in `queue`, visible from `visible_ms`.
    Waiting {
        queue: QueueId,
        attempts: u32,
        visible_ms: u64,
        enqueued_ms: u64,
        last_error: Option<String>,
    },
    /// Leased by a consumer since `since_ms`.
    InFlight {
        queue: QueueId,
        attempts: u32,
        since_ms: u64,
        enqueued_ms: u64,
        last_error: Option<String>,
    },
    /// Acknowledged; what the consumer recorded.
    Done { outcome: Vec<u8> },
}

/// The state of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Messages waiting (including those delayed for a retry).
    pub depth: u64,
    pub in_flight: u64,
    /// When the oldest message still in the queue (waiting or in flight)
    /// was sent, in ms since the epoch.
    pub oldest_enqueued_ms: Option<u64>,
}

/// Named queues (competing consumers) and topics (every subscriber gets
/// every message) a tenant creates; functions name them in triggers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Queue,
    Topic,
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelKind::Queue => "queue",
            ChannelKind::Topic => "topic",
        })
    }
}

/// Default time a consumer has to finish a queue message before another
/// may get it.
pub const VISIBILITY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default messages a queue consumer leases at once.
pub const BATCH_SIZE_DEFAULT: u32 = 10;
/// Highest `batch_size`.
pub const BATCH_SIZE_MAX: u32 = 1000;
/// Highest visibility timeout (12 hours, like SQS).
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 3600 * 1000;

/// A named queue or topic as created.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// Queues: how long a lease lasts.
    pub visibility_timeout_ms: u64,
    /// Queues: how many messages a consumer leases at once.
    pub batch_size: u32,
    pub created_ms: u64,
}

/// A message as listed, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: Uuid,
    pub attempts: u32,
    pub enqueued_ms: u64,
    pub last_error: Option<String>,
    pub payload_bytes: usize,
}

/// Why a queue operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error(
        "the message is {len} bytes, at most {PAYLOAD_BYTES_MAX} are allowed: store large data as a blob and send its key"
    )]
    PayloadTooLarge { len: usize },
    #[error(
        "the idempotency key is {len} bytes, at most {IDEMPOTENCY_KEY_BYTES_MAX} are allowed: use a shorter key (hash long ones)"
    )]
    IdempotencyKeyTooLong { len: usize },
    /// The message is not leased (any more): its lease expired, or it was
    /// acknowledged already.
    #[error(
        "message {id} is not in flight in queue {queue}: its lease expired or it was finished already"
    )]
    NotInFlight { queue: String, id: Uuid },
    #[error("{kind} {name:?} does not exist: create it with `updraft {kind}s create {name}`")]
    ChannelNotFound { kind: ChannelKind, name: String },
    #[error(
        "{name:?} is already a {existing}: choose another name, or remove the {existing} first"
    )]
    ChannelConflict { name: String, existing: ChannelKind },
    #[error("invalid {0}")]
    BadChannel(String),
    /// The disk or the database failed: the detail is in the source.
    #[error("queue storage failed")]
    Storage(#[from] updraft_core::Failure),
    /// The cluster's NATS does not answer (cluster mode); the client
    /// reconnects by itself.
    #[error("queues are unavailable (the cluster's NATS cannot be reached): retry shortly")]
    Unavailable(#[source] updraft_core::Failure),
}

impl QueueError {
    /// A failure of storage with nothing under it.
    pub fn storage(what: impl Into<std::borrow::Cow<'static, str>>) -> QueueError {
        QueueError::Storage(updraft_core::Failure::msg(what))
    }
}

impl updraft_core::Classify for QueueError {
    fn kind(&self) -> updraft_core::ErrorKind {
        use updraft_core::ErrorKind as K;
        match self {
            QueueError::PayloadTooLarge { .. } => K::TooLarge,
            QueueError::IdempotencyKeyTooLong { .. } | QueueError::BadChannel(_) => K::Invalid,
            QueueError::NotInFlight { .. } | QueueError::ChannelConflict { .. } => K::Conflict,
            QueueError::ChannelNotFound { .. } => K::NotFound,
            QueueError::Storage(_) => K::Internal,
            QueueError::Unavailable(_) => K::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            QueueError::PayloadTooLarge { .. } => "payload_too_large",
            QueueError::IdempotencyKeyTooLong { .. } | QueueError::BadChannel(_) => "bad_request",
            QueueError::NotInFlight { .. } => "not_in_flight",
            QueueError::ChannelConflict { .. } => "channel_conflict",
            QueueError::ChannelNotFound { .. } => "channel_not_found",
            QueueError::Storage(_) => "storage",
            QueueError::Unavailable(_) => "unavailable",
        }
    }
}

/// The operations of a queue backend. Every change is durable when it
/// returns.
#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Sends messages, all or nothing.
    async fn send(
        &self,
        queue: &QueueId,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Accepted>, QueueError> {
        let mut sent = self.send_to_many(vec![(queue.clone(), messages)]).await?;
        Ok(sent.pop().unwrap_or_default())
    }
    /// Sends to several queues in one commit, all or nothing (a topic's
    /// fan-out).
    async fn send_to_many(
        &self,
        batches: Vec<(QueueId, Vec<NewMessage>)>,
    ) -> Result<Vec<Vec<Accepted>>, QueueError>;
    /// Creates (or updates) a named queue or topic of `owner`.
    async fn create_channel(&self, owner: &str, channel: Channel) -> Result<Channel, QueueError>;
    /// Removes a named queue or topic; a queue's waiting messages go with
    /// it. `false` if there was none.
    async fn delete_channel(&self, owner: &str, name: &str) -> Result<bool, QueueError>;
    /// Removes every message of a queue, waiting or in flight; returns how
    /// many.
    async fn purge(&self, queue: &QueueId) -> Result<usize, QueueError>;
    /// `owner`'s named queues and topics, by name.
    async fn channels(&self, owner: &str) -> Result<Vec<Channel>, QueueError>;
    /// Leases up to `max` visible messages, oldest first, for `lease`;
    /// waits up to `wait` for one to become visible.
    async fn receive(
        &self,
        queue: &QueueId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError>;
    /// Finishes a leased message, keeping `outcome` under its id for
    /// [`RETENTION`].
    async fn ack(&self, queue: &QueueId, id: Uuid, outcome: Vec<u8>) -> Result<(), QueueError>;
    /// Ends a lease in failure: visible again after `delay`, one attempt
    /// more.
    async fn retry(
        &self,
        queue: &QueueId,
        id: Uuid,
        delay: Duration,
        error: String,
    ) -> Result<(), QueueError>;
    /// Ends a lease without an attempt: visible again after `delay`, its
    /// attempts and last error unchanged (it was not run: no capacity).
    async fn release(&self, queue: &QueueId, id: Uuid, delay: Duration) -> Result<(), QueueError>;
    /// Ends a lease by moving the message, one attempt more, to `to`
    /// (a dead-letter queue).
    async fn move_to(
        &self,
        queue: &QueueId,
        id: Uuid,
        to: &QueueId,
        error: String,
    ) -> Result<(), QueueError>;
    /// Moves every waiting message of `from` to `to` with its attempts
    /// reset; returns how many moved.
    async fn redrive(&self, from: &QueueId, to: &QueueId) -> Result<usize, QueueError>;
    /// Where message `id` is, if it is in one of `owner`'s queues or
    /// finished recently.
    async fn locate(&self, owner: &str, id: Uuid) -> Result<Option<MessageState>, QueueError>;
    async fn stats(&self, queue: &QueueId) -> Result<QueueStats, QueueError>;
    /// Waiting messages of `queue`, oldest first, at most `limit`.
    async fn list(&self, queue: &QueueId, limit: usize) -> Result<Vec<MessageInfo>, QueueError>;
    /// Whether other processes send to these queues too (cluster mode):
    /// then every consumer polls, since its own sends are not all there is.
    fn shared(&self) -> bool {
        false
    }
}

/// Checks a channel's name and settings.
pub fn check_channel(channel: &Channel) -> Result<(), QueueError> {
    let name = &channel.name;
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !plain {
        return Err(QueueError::BadChannel(format!(
            "{} name {name:?}: use 1-63 lowercase letters, digits or '-', starting with a letter",
            channel.kind
        )));
    }
    if !(1..=VISIBILITY_TIMEOUT_MS_MAX).contains(&channel.visibility_timeout_ms) {
        return Err(QueueError::BadChannel(format!(
            "visibility_timeout_ms = {}: must be between 1 and {VISIBILITY_TIMEOUT_MS_MAX}",
            channel.visibility_timeout_ms
        )));
    }
    if !(1..=BATCH_SIZE_MAX).contains(&channel.batch_size) {
        return Err(QueueError::BadChannel(format!(
            "batch_size = {}: must be between 1 and {BATCH_SIZE_MAX}",
            channel.batch_size
        )));
    }
    Ok(())
}

pub fn check_message(message: &NewMessage) -> Result<(), QueueError> {
    if message.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(QueueError::PayloadTooLarge {
            len: message.payload.len(),
        });
    }
    match &message.idempotency_key {
        Some(key) if key.len() > IDEMPOTENCY_KEY_BYTES_MAX => {
            Err(QueueError::IdempotencyKeyTooLong { len: key.len() })
        }
        _ => Ok(()),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
