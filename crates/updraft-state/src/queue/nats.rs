//! Queues in NATS JetStream (cluster mode): every node sends to and leases
//! from the same queues, so any node runs any accepted work, and a node
//! that dies mid-run loses nothing: its leases expire and another node
//! gets the messages.
//!
//! - **Messages** are in one work-queue stream, `UPDRAFT_QUEUES`, a
//!   subject per queue (`updraft.q.{owner}.{hex name}`), file storage. A
//!   message leaves the stream when it is acknowledged.
//! - **Leases** are JetStream deliveries: one durable pull consumer per
//!   queue shared by every node (competing consumers), its AckWait the
//!   lease. A lease that expires is delivered again, to any node.
//! - **Where each message is** (attempts, last error, waiting or in flight
//!   and its ack subject) is a record in the KV bucket `updraft-messages`
//!   under `{owner}.{id}`, so any node can locate, ack or retry it;
//!   outcomes of finished messages are in `updraft-outcomes`, kept for
//!   [`RETENTION`].
//! - **Retries and moves** publish the message again (to the same queue,
//!   or a dead-letter queue) and then acknowledge the delivery: a retried
//!   message is waiting again at once, as the embedded backend counts it.
//!   A retry with a delay waits as a negative acknowledgement with that
//!   delay when it is next delivered early (counted in flight meanwhile).
//! - **Idempotency keys** are JetStream's message de-duplication
//!   (`Nats-Msg-Id`, a window of [`RETENTION`]), with an id derived from
//!   the key, so a repeated send answers the first message's id.
//! - **Channels** (named queues and topics) are in the KV bucket
//!   `updraft-channels`.
//!
//! A batch (`send_to_many`) is checked whole, then published message by
//! message: NATS 2.9 has no atomic multi-subject publish, so an outage
//! midway can leave part of it sent. Losing NATS makes every operation
//! [`QueueError::Unavailable`] until the client has reconnected by itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{self, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use updraft_core::Failure;

use super::{
    Accepted, Channel, MessageInfo, MessageState, NewMessage, PAYLOAD_BYTES_MAX, QueueError,
    QueueId, QueueStats, QueueStore, RETENTION, Uuid, check_channel, check_message, now_ms,
};
use crate::nats::{Cluster, MESSAGE_OVERHEAD, boxed};

/// The stream of every queue's messages.
const STREAM: &str = "UPDRAFT_QUEUES";
/// What every queue's subject starts with.
const SUBJECT_PREFIX: &str = "updraft.q";
/// Records of messages not yet finished.
const MESSAGES: &str = "updraft-messages";
/// Outcomes of finished messages.
const OUTCOMES: &str = "updraft-outcomes";
/// Named queues and topics.
const CHANNELS: &str = "updraft-channels";

/// Headers of a queued message.
const ID_HEADER: &str = "Updraft-Id";
const ENQUEUED_HEADER: &str = "Updraft-Enqueued";
/// When a retried message may run again (ms since the epoch).
const VISIBLE_HEADER: &str = "Updraft-Visible";

/// Most messages one redrive round moves.
const REDRIVE_BATCH: usize = 256;
/// How long a redrive holds what it moves.
const REDRIVE_LEASE: Duration = Duration::from_secs(60);

/// Where a message not yet finished is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    queue: String,
    attempts: u32,
    enqueued_ms: u64,
    #[serde(default)]
    last_error: Option<String>,
    /// `Some` while leased: since when, and the delivery's ack subject.
    #[serde(default)]
    lease: Option<Lease>,
    #[serde(default)]
    visible_ms: u64,
}

impl Record {
    /// A message of `queue` sent at `enqueued_ms`, waiting, never tried.
    fn waiting(queue: &QueueId, enqueued_ms: u64, now: u64) -> Record {
        Record {
            queue: queue.name.clone(),
            attempts: 0,
            enqueued_ms,
            last_error: None,
            lease: None,
            visible_ms: now,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    since_ms: u64,
    reply: String,
    /// The delivered message's stream sequence (its payload is read from
    /// there to publish it again).
    sequence: u64,
}

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> QueueError {
    move |e| QueueError::Unavailable(Failure::boxed(what, e))
}

fn corrupt(e: serde_json::Error) -> QueueError {
    QueueError::Storage(Failure::context("a queue record is unreadable", e))
}

/// The subject of `queue`: names may hold characters subjects do not.
fn subject(queue: &QueueId) -> String {
    format!(
        "{SUBJECT_PREFIX}.{}.{}",
        queue.owner,
        hex::encode(queue.name.as_bytes())
    )
}

/// The durable consumer of `queue`: short, whatever the names' lengths.
fn consumer_name(queue: &QueueId) -> String {
    let hash = Sha256::digest(format!("{}/{}", queue.owner, queue.name).as_bytes());
    format!("q-{}", hex::encode(&hash[..16]))
}

fn consumer_missing(kind: &async_nats::jetstream::context::ConsumerInfoErrorKind) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    match kind {
        K::NotFound => true,
        K::JetStream(e) => e.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

fn record_key(owner: &str, id: Uuid) -> String {
    format!("{owner}.{}", id.simple())
}

/// The id of a message sent under an idempotency key: the same key to the
/// same queue is the same id.
fn keyed_id(queue: &QueueId, key: &str) -> Uuid {
    let hash = Sha256::digest(format!("{}\0{}\0{key}", queue.owner, queue.name).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// Queues in JetStream.
pub struct NatsQueues {
    cluster: Cluster,
    stream: stream::Stream,
    messages: Store,
    outcomes: Store,
    channels: Store,
    /// Each queue's consumer as made by this node, with its lease.
    consumers: Mutex<HashMap<QueueId, (Duration, PullConsumer)>>,
}

impl NatsQueues {
    /// Opens the cluster's queues, creating the stream and buckets the
    /// first time.
    pub async fn open(cluster: &Cluster) -> Result<NatsQueues, QueueError> {
        let failed = unavailable("opening the queues failed");
        let js = &cluster.jetstream;
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_message_size: i32::try_from(PAYLOAD_BYTES_MAX + MESSAGE_OVERHEAD)
                .unwrap_or(i32::MAX),
            duplicate_window: RETENTION,
            allow_direct: true,
            num_replicas: cluster.replicas,
            ..Default::default()
        };
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| failed(boxed(e)))?;
        let bucket = |name: &'static str, max_age| async move {
            cluster
                .key_value_aged(name, true, max_age)
                .await
                .map_err(unavailable("opening the queues failed"))?
                .ok_or_else(|| QueueError::storage("a queue bucket was not created"))
        };
        Ok(NatsQueues {
            cluster: cluster.clone(),
            stream,
            messages: bucket(MESSAGES, Duration::ZERO).await?,
            outcomes: bucket(OUTCOMES, RETENTION).await?,
            channels: bucket(CHANNELS, Duration::ZERO).await?,
            consumers: Mutex::default(),
        })
    }

    /// The consumer of `queue` with leases of `lease`, made (or changed)
    /// if this node has not yet.
    async fn consumer(&self, queue: &QueueId, lease: Duration) -> Result<PullConsumer, QueueError> {
        if let Some((held, consumer)) = self
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            && *held == lease
        {
            return Ok(consumer.clone());
        }
        let name = consumer_name(queue);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject(queue),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: lease,
            max_deliver: -1,
            max_ack_pending: -1,
            ..Default::default()
        };
        // Creating with the same name updates the lease of an existing one.
        let consumer: PullConsumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable("making a queue consumer failed")(boxed(e)))?;
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.clone(), (lease, consumer.clone()));
        Ok(consumer)
    }

    async fn record(&self, owner: &str, id: Uuid) -> Result<Option<(Record, u64)>, QueueError> {
        let entry = self
            .messages
            .entry(record_key(owner, id))
            .await
            .map_err(|e| unavailable("reading a message record failed")(boxed(e)))?;
        match entry {
            Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                Ok(Some((
                    serde_json::from_slice(&entry.value).map_err(corrupt)?,
                    entry.revision,
                )))
            }
            _ => Ok(None),
        }
    }

    async fn put_record(&self, owner: &str, id: Uuid, record: &Record) -> Result<(), QueueError> {
        let value = Bytes::from(serde_json::to_vec(record).map_err(corrupt)?);
        self.messages
            .put(record_key(owner, id), value)
            .await
            .map_err(|e| unavailable("writing a message record failed")(boxed(e)))?;
        Ok(())
    }

    /// The leased record of `id` in `queue`, or [`QueueError::NotInFlight`].
    /// Ends a lease: the message visible again in its queue after `delay`;
    /// with an `error`, one attempt more (a retry), without, none (a release).
    async fn back_later(
        &self,
        queue: &QueueId,
        id: Uuid,
        delay: Duration,
        error: Option<String>,
    ) -> Result<(), QueueError> {
        let (mut record, lease) = self.leased(queue, id).await?;
        let payload = self.payload(&lease).await?;
        let visible = now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if let Some(error) = error {
            record.attempts += 1;
            record.last_error = Some(error);
        }
        record.lease = None;
        record.visible_ms = visible;
        // The record, then the message again, then the answer to the
        // delivery: see [`NatsQueues::requeue`].
        let visible_header = if delay.is_zero() { 0 } else { visible };
        self.requeue(queue, id, &record, visible_header, payload)
            .await?;
        self.answer(&lease.reply, "+ACK", String::new()).await
    }

    async fn leased(&self, queue: &QueueId, id: Uuid) -> Result<(Record, Lease), QueueError> {
        let not_in_flight = || QueueError::NotInFlight {
            queue: queue.to_string(),
            id,
        };
        let (record, _) = self
            .record(&queue.owner, id)
            .await?
            .ok_or_else(not_in_flight)?;
        match record.lease.clone() {
            Some(lease) if record.queue == queue.name => Ok((record, lease)),
            _ => Err(not_in_flight()),
        }
    }

    /// Publishes a message to `queue` and waits for JetStream to store it;
    /// `dedup`: under its id, de-duplicated. Whether it was a duplicate.
    async fn publish(
        &self,
        queue: &QueueId,
        id: Uuid,
        enqueued_ms: u64,
        visible_ms: u64,
        dedup: bool,
        payload: Bytes,
    ) -> Result<bool, QueueError> {
        let stored = self
            .send_unacked(queue, id, enqueued_ms, visible_ms, dedup, payload)
            .await?
            .await
            .map_err(|e| unavailable("sending a message failed")(boxed(e)))?;
        Ok(stored.duplicate)
    }

    /// Sends a message to `queue` without waiting for it to be stored:
    /// messages sent in turn keep their order; await the answers together.
    async fn send_unacked(
        &self,
        queue: &QueueId,
        id: Uuid,
        enqueued_ms: u64,
        visible_ms: u64,
        dedup: bool,
        payload: Bytes,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, QueueError> {
        let mut headers = HeaderMap::new();
        headers.insert(ID_HEADER, id.to_string().as_str());
        headers.insert(ENQUEUED_HEADER, enqueued_ms.to_string().as_str());
        if visible_ms > 0 {
            headers.insert(VISIBLE_HEADER, visible_ms.to_string().as_str());
        }
        if dedup {
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
        }
        self.cluster
            .jetstream
            .publish_with_headers(subject(queue), headers, payload)
            .await
            .map_err(|e| unavailable("sending a message failed")(boxed(e)))
    }

    /// Sends a message of `to` again (a retry, a move or a redrive) with
    /// its `record`, waiting: the record first, or a node that leases the
    /// new message at once could have its lease overwritten by this one's
    /// record, and the run it starts could then not be answered (seen as a
    /// redriven message stuck until its lease expired). The caller answers
    /// the old delivery after: a crash before that runs the message twice,
    /// never zero times.
    async fn requeue(
        &self,
        to: &QueueId,
        id: Uuid,
        record: &Record,
        visible_header: u64,
        payload: Bytes,
    ) -> Result<(), QueueError> {
        self.put_record(&to.owner, id, record).await?;
        self.publish(to, id, record.enqueued_ms, visible_header, false, payload)
            .await?;
        Ok(())
    }

    /// The record of a message just sent, waiting. A keyed message's is
    /// made only if it has none (a duplicate's record is the first's):
    /// whether it was made.
    async fn new_record(
        &self,
        queue: &QueueId,
        id: Uuid,
        keyed: bool,
        now: u64,
    ) -> Result<bool, QueueError> {
        let record = Record::waiting(queue, now, now);
        if !keyed {
            self.put_record(&queue.owner, id, &record).await?;
            return Ok(true);
        }
        let value = Bytes::from(serde_json::to_vec(&record).map_err(corrupt)?);
        match self
            .messages
            .create(record_key(&queue.owner, id), value)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                Ok(false)
            }
            Err(e) => Err(unavailable("writing a message record failed")(boxed(e))),
        }
    }

    /// Answers a delivery (`+ACK`, `-NAK {...}`) and waits for JetStream
    /// to have taken the answer.
    async fn answer(
        &self,
        reply: &str,
        answer: &'static str,
        body: String,
    ) -> Result<(), QueueError> {
        let payload = Bytes::from(format!("{answer}{body}"));
        self.cluster
            .jetstream
            .client()
            .request(reply.to_string(), payload)
            .await
            .map_err(|e| unavailable("answering a delivery failed")(boxed(e)))?;
        Ok(())
    }

    /// The stored payload of a leased message.
    async fn payload(&self, lease: &Lease) -> Result<Bytes, QueueError> {
        let message = self
            .stream
            .direct_get(lease.sequence)
            .await
            .map_err(|e| unavailable("reading a leased message failed")(boxed(e)))?;
        Ok(message.payload)
    }

    /// Leases up to `max` deliveries of `queue`, waiting up to `wait` for
    /// the first. Messages not yet visible (a delayed retry) go back with
    /// the delay they have left.
    async fn fetch(
        &self,
        queue: &QueueId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<async_nats::jetstream::Message>, QueueError> {
        let consumer = self.consumer(queue, lease).await?;
        let failed = unavailable("receiving messages failed");
        // A pull request lost with the connection is never answered: give
        // up on it after its own wait and a request's time, and pull again.
        let limit = wait + crate::nats::REQUEST_TIMEOUT;
        let take = |batch: Result<consumer::pull::Batch, _>| async {
            let mut batch = batch.map_err(|e| failed(boxed(e)))?;
            let mut got = Vec::new();
            let read = async {
                while let Some(message) = batch.next().await {
                    got.push(message.map_err(&failed)?);
                }
                Ok::<_, QueueError>(())
            };
            match tokio::time::timeout(limit, read).await {
                Ok(read) => read.map(|()| got),
                Err(elapsed) => Err(failed(boxed(elapsed))),
            }
        };
        // Whatever is there now, without waiting.
        let mut got = take(consumer.fetch().max_messages(max).messages().await).await?;
        if got.is_empty() && !wait.is_zero() {
            // Then wait for one only: a request for more would hold them
            // leased by nobody until it expires.
            got = take(
                consumer
                    .batch()
                    .max_messages(1)
                    .expires(wait)
                    .messages()
                    .await,
            )
            .await?;
            if !got.is_empty() && max > 1 {
                got.extend(take(consumer.fetch().max_messages(max - 1).messages().await).await?);
            }
        }
        Ok(got)
    }
}

#[async_trait]
impl QueueStore for NatsQueues {
    async fn send_to_many(
        &self,
        batches: Vec<(QueueId, Vec<NewMessage>)>,
    ) -> Result<Vec<Vec<Accepted>>, QueueError> {
        for (_, messages) in &batches {
            messages.iter().try_for_each(check_message)?;
        }
        let now = now_ms();
        let mut all = Vec::with_capacity(batches.len());
        for (queue, messages) in batches {
            let ids: Vec<(Uuid, bool)> = messages
                .iter()
                .map(|m| match &m.idempotency_key {
                    Some(key) => (keyed_id(&queue, key), true),
                    None => (Uuid::now_v7(), false),
                })
                .collect();
            // The records first, all at once, so a message is never
            // delivered without one; then the messages in order, their
            // acknowledgements awaited together.
            // A key repeated within the batch is a duplicate of its first
            // use, which makes the record.
            let mut seen = std::collections::HashSet::new();
            let queue_ref = &queue;
            let records = ids.iter().map(|(id, keyed)| {
                let first = seen.insert(*id);
                async move {
                    match first {
                        true => self.new_record(queue_ref, *id, *keyed, now).await,
                        false => Ok(false),
                    }
                }
            });
            let fresh = futures::future::try_join_all(records).await?;
            let mut sent = Vec::with_capacity(ids.len());
            for ((id, keyed), message) in ids.iter().zip(messages) {
                let payload = Bytes::from(message.payload);
                sent.push(
                    self.send_unacked(&queue, *id, now, 0, *keyed, payload)
                        .await?,
                );
            }
            let stored =
                futures::future::try_join_all(sent.into_iter().map(IntoFuture::into_future))
                    .await
                    .map_err(|e| unavailable("sending a message failed")(boxed(e)))?;
            let mut accepted = Vec::with_capacity(ids.len());
            for (((id, _), fresh), stored) in ids.into_iter().zip(fresh).zip(stored) {
                if stored.duplicate && fresh {
                    // The first is finished (its record gone): the record
                    // just made stands for nothing.
                    self.messages
                        .purge(record_key(&queue.owner, id))
                        .await
                        .map_err(|e| unavailable("writing a message record failed")(boxed(e)))?;
                }
                accepted.push(Accepted {
                    id,
                    duplicate: stored.duplicate || !fresh,
                });
            }
            all.push(accepted);
        }
        Ok(all)
    }

    async fn create_channel(&self, owner: &str, channel: Channel) -> Result<Channel, QueueError> {
        check_channel(&channel)?;
        let key = format!("{owner}.{}", channel.name);
        let failed = unavailable("writing a channel failed");
        loop {
            let entry = self
                .channels
                .entry(key.as_str())
                .await
                .map_err(|e| failed(boxed(e)))?;
            let existing = match &entry {
                Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                    Some(serde_json::from_slice::<Channel>(&e.value).map_err(corrupt)?)
                }
                _ => None,
            };
            let mut channel = channel.clone();
            match existing {
                Some(old) if old.kind != channel.kind => {
                    return Err(QueueError::ChannelConflict {
                        name: channel.name,
                        existing: old.kind,
                    });
                }
                Some(old) => channel.created_ms = old.created_ms,
                None => {}
            }
            let value = Bytes::from(serde_json::to_vec(&channel).map_err(corrupt)?);
            let revision = entry.map(|e| e.revision);
            // Another node changed it first: look again.
            if crate::nats::write_if(&self.channels, &key, revision, value)
                .await
                .map_err(&failed)?
            {
                return Ok(channel);
            }
        }
    }

    async fn delete_channel(&self, owner: &str, name: &str) -> Result<bool, QueueError> {
        let key = format!("{owner}.{name}");
        let failed = unavailable("deleting a channel failed");
        let existed = self
            .channels
            .get(key.as_str())
            .await
            .map_err(|e| failed(boxed(e)))?
            .is_some();
        if existed {
            self.channels
                .purge(key.as_str())
                .await
                .map_err(|e| failed(boxed(e)))?;
        }
        Ok(existed)
    }

    async fn purge(&self, queue: &QueueId) -> Result<usize, QueueError> {
        let ids = self.ids(queue, usize::MAX).await?;
        let purged = self
            .stream
            .purge()
            .filter(subject(queue))
            .await
            .map_err(|e| unavailable("purging a queue failed")(boxed(e)))?;
        for (id, _) in ids {
            self.messages
                .purge(record_key(&queue.owner, id))
                .await
                .map_err(|e| unavailable("purging a queue failed")(boxed(e)))?;
        }
        Ok(usize::try_from(purged.purged).unwrap_or(usize::MAX))
    }

    async fn channels(&self, owner: &str) -> Result<Vec<Channel>, QueueError> {
        let filter = format!("{}{owner}.*", self.channels.prefix);
        let messages = self
            .cluster
            .last_per_subject(&self.channels.stream, filter, false)
            .await
            .map_err(unavailable("reading channels failed"))?;
        let mut channels: Vec<Channel> = Vec::new();
        for message in messages {
            if crate::nats::is_live(&message) {
                channels.push(serde_json::from_slice(&message.payload).map_err(corrupt)?);
            }
        }
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(channels)
    }

    async fn receive(
        &self,
        queue: &QueueId,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<super::Message>, QueueError> {
        let deliveries = self.fetch(queue, max.max(1), lease, wait).await?;
        let now = now_ms();
        // Each delivery's record is read and written at once with the
        // others': a batch costs two round trips, not two per message.
        let leased = deliveries
            .into_iter()
            .map(|delivery| self.lease(queue, delivery, now));
        let leased = futures::future::try_join_all(leased).await?;
        Ok(leased.into_iter().flatten().collect())
    }

    async fn ack(&self, queue: &QueueId, id: Uuid, outcome: Vec<u8>) -> Result<(), QueueError> {
        let (_, lease) = self.leased(queue, id).await?;
        let failed = unavailable("finishing a message failed");
        // The outcome first: a crash before the ack runs the message again
        // (at least once), never loses it.
        self.outcomes
            .put(record_key(&queue.owner, id), Bytes::from(outcome))
            .await
            .map_err(|e| failed(boxed(e)))?;
        // Both after the outcome, in either order: a record left by a
        // crash between them only shows the message in flight.
        let purge = async {
            self.messages
                .purge(record_key(&queue.owner, id))
                .await
                .map_err(|e| failed(boxed(e)))
        };
        tokio::try_join!(self.answer(&lease.reply, "+ACK", String::new()), purge)?;
        Ok(())
    }

    async fn retry(
        &self,
        queue: &QueueId,
        id: Uuid,
        delay: Duration,
        error: String,
    ) -> Result<(), QueueError> {
        self.back_later(queue, id, delay, Some(error)).await
    }

    async fn release(&self, queue: &QueueId, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        self.back_later(queue, id, delay, None).await
    }

    async fn move_to(
        &self,
        queue: &QueueId,
        id: Uuid,
        to: &QueueId,
        error: String,
    ) -> Result<(), QueueError> {
        let (mut record, lease) = self.leased(queue, id).await?;
        let payload = self.payload(&lease).await?;
        record.attempts += 1;
        record.last_error = Some(error);
        record.lease = None;
        record.queue = to.name.clone();
        record.visible_ms = now_ms();
        self.requeue(to, id, &record, 0, payload).await?;
        self.answer(&lease.reply, "+ACK", String::new()).await
    }

    async fn redrive(&self, from: &QueueId, to: &QueueId) -> Result<usize, QueueError> {
        let mut moved = 0;
        loop {
            let deliveries = self
                .fetch(from, REDRIVE_BATCH, REDRIVE_LEASE, Duration::ZERO)
                .await?;
            if deliveries.is_empty() {
                return Ok(moved);
            }
            for delivery in deliveries {
                let headers = delivery.headers.as_ref();
                let id = header(headers, ID_HEADER).and_then(|s| Uuid::parse_str(&s).ok());
                if let Some(id) = id {
                    let (mut record, _) = match self.record(&from.owner, id).await? {
                        Some(found) => found,
                        None => continue,
                    };
                    record.attempts = 0;
                    record.lease = None;
                    record.queue = to.name.clone();
                    record.visible_ms = now_ms();
                    self.requeue(to, id, &record, 0, delivery.payload.clone())
                        .await?;
                    moved += 1;
                }
                delivery
                    .double_ack()
                    .await
                    .map_err(unavailable("answering a delivery failed"))?;
            }
        }
    }

    async fn locate(&self, owner: &str, id: Uuid) -> Result<Option<MessageState>, QueueError> {
        if let Some((record, _)) = self.record(owner, id).await? {
            let queue = QueueId::new(owner, record.queue);
            return Ok(Some(match record.lease {
                Some(lease) => MessageState::InFlight {
                    queue,
                    attempts: record.attempts,
                    since_ms: lease.since_ms,
                    enqueued_ms: record.enqueued_ms,
                    last_error: record.last_error,
                },
                None => MessageState::Waiting {
                    queue,
                    attempts: record.attempts,
                    visible_ms: record.visible_ms,
                    enqueued_ms: record.enqueued_ms,
                    last_error: record.last_error,
                },
            }));
        }
        let outcome = self
            .outcomes
            .get(record_key(owner, id))
            .await
            .map_err(|e| unavailable("reading an outcome failed")(boxed(e)))?;
        Ok(outcome.map(|outcome| MessageState::Done {
            outcome: outcome.to_vec(),
        }))
    }

    async fn stats(&self, queue: &QueueId) -> Result<QueueStats, QueueError> {
        let failed = unavailable("reading a queue's state failed");
        let info = match self.stream.consumer_info(consumer_name(queue)).await {
            Ok(info) => Some(info),
            Err(e) if consumer_missing(&e.kind()) => None,
            Err(e) => return Err(failed(boxed(e))),
        };
        let oldest = match self
            .stream
            .direct_get_first_for_subject(subject(queue))
            .await
        {
            Ok(first) => header(Some(&first.headers), ENQUEUED_HEADER).and_then(|v| v.parse().ok()),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => None,
            Err(e) => return Err(failed(boxed(e))),
        };
        Ok(match info {
            Some(info) => QueueStats {
                depth: info.num_pending,
                in_flight: info.num_ack_pending as u64,
                oldest_enqueued_ms: oldest,
            },
            // No consumer yet: everything there waits.
            None => QueueStats {
                depth: self.ids(queue, usize::MAX).await?.len() as u64,
                in_flight: 0,
                oldest_enqueued_ms: oldest,
            },
        })
    }

    async fn list(&self, queue: &QueueId, limit: usize) -> Result<Vec<MessageInfo>, QueueError> {
        let mut out = Vec::new();
        for (id, payload_bytes) in self.ids(queue, usize::MAX).await? {
            if out.len() >= limit {
                break;
            }
            let Some((record, _)) = self.record(&queue.owner, id).await? else {
                continue;
            };
            if record.lease.is_some() || record.queue != queue.name {
                continue;
            }
            out.push(MessageInfo {
                id,
                attempts: record.attempts,
                enqueued_ms: record.enqueued_ms,
                last_error: record.last_error,
                payload_bytes,
            });
        }
        Ok(out)
    }

    fn shared(&self) -> bool {
        true
    }
}

impl NatsQueues {
    /// Records a delivery as leased and makes it a message; `None` for one
    /// that is not to run yet (a delayed retry goes back with the delay it
    /// has left) or is not Updraft's.
    async fn lease(
        &self,
        queue: &QueueId,
        delivery: async_nats::jetstream::Message,
        now: u64,
    ) -> Result<Option<super::Message>, QueueError> {
        let headers = delivery.headers.as_ref();
        let Some(id) = header(headers, ID_HEADER).and_then(|s| Uuid::parse_str(&s).ok()) else {
            // Not Updraft's: acknowledge it away rather than loop on it.
            let _ = delivery.ack().await;
            return Ok(None);
        };
        let visible = header(headers, VISIBLE_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if visible > now {
            let delay = Duration::from_millis(visible - now);
            let _ = delivery
                .ack_with(async_nats::jetstream::AckKind::Nak(Some(delay)))
                .await;
            return Ok(None);
        }
        let sequence = delivery
            .info()
            .map_err(unavailable("reading a delivery failed"))?
            .stream_sequence;
        let reply = delivery
            .reply
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let enqueued = header(headers, ENQUEUED_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(now);
        let mut record = match self.record(&queue.owner, id).await? {
            Some((record, _)) => record,
            // Sent by a node that died before its record: a fresh one.
            None => Record::waiting(queue, enqueued, now),
        };
        record.queue = queue.name.clone();
        record.lease = Some(Lease {
            since_ms: now,
            reply,
            sequence,
        });
        self.put_record(&queue.owner, id, &record).await?;
        Ok(Some(super::Message {
            id,
            payload: delivery.payload.to_vec(),
            attempts: record.attempts,
            enqueued_ms: record.enqueued_ms,
            last_error: record.last_error,
        }))
    }

    /// The ids and payload sizes of `queue`'s messages in the stream
    /// (waiting or leased), oldest first, at most `limit`: read one by one,
    /// for listings and purges.
    async fn ids(&self, queue: &QueueId, limit: usize) -> Result<Vec<(Uuid, usize)>, QueueError> {
        let subject = subject(queue);
        let mut ids = Vec::new();
        let mut next = 0;
        while ids.len() < limit {
            let message = match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(unavailable("listing a queue failed")(boxed(e))),
            };
            next = message.sequence + 1;
            if let Some(id) =
                header(Some(&message.headers), ID_HEADER).and_then(|s| Uuid::parse_str(&s).ok())
            {
                ids.push((id, message.payload.len()));
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::queue::model;
    use crate::testing::NatsServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn matches_the_reference_model() {
        let server = NatsServer::start();
        let queues = NatsQueues::open(&server.cluster().await).await.unwrap();
        for seed in [7, 11] {
            model::run(&queues, &format!("owner{seed}"), seed, 400).await;
        }
    }

    /// A key repeated within one batch is a duplicate of its first use,
    /// whichever record write finishes first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_repeated_in_a_batch_is_its_first_uses_duplicate() {
        let server = NatsServer::start();
        let queues = NatsQueues::open(&server.cluster().await).await.unwrap();
        let queue = QueueId::new("owner", "jobs");
        let keyed = |key: &str| NewMessage {
            payload: key.as_bytes().to_vec(),
            idempotency_key: Some(key.to_string()),
        };
        for _ in 0..20 {
            let batch = vec![keyed("a"), keyed("a"), keyed("b"), keyed("a")];
            let sent = queues.send(&queue, batch).await.unwrap();
            let first = sent[0].duplicate;
            assert_eq!(sent[0].id, sent[1].id);
            assert!(sent[1].duplicate && sent[3].duplicate, "{sent:?}");
            assert_eq!(sent[2].duplicate, first, "{sent:?}");
            queues.purge(&queue).await.unwrap();
        }
        let stats = queues.stats(&queue).await.unwrap();
        assert_eq!(stats.depth, 0);
    }
}
