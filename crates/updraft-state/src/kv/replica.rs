//! A node's copy of the key-value buckets it reads (cluster mode): a get is
//! answered from memory instead of a round trip to NATS.
//!
//! - **Fed by a watch.** The first read of a bucket starts a watch of all
//!   its keys, from their current values on (`LastPerSubject`). Until the
//!   watch has delivered the bucket's last write as of its start, reads go
//!   to NATS; from then on, from the copy.
//! - **Read your writes.** This node's own writes are applied to the copy
//!   as soon as JetStream acknowledges them, with their revision; the
//!   watch's later delivery of the same write changes nothing. Every value
//!   carries its revision and only a newer one replaces it, deletes
//!   included (kept as tombstones), so the copy never goes back in time.
//! - **Other nodes' writes** arrive with the watch, a fraction of a
//!   millisecond after they are acknowledged on one network: a read on
//!   another node in that window sees the value before. Increments and
//!   compare-and-swap always read NATS, so atomics stay exact.
//! - **Bounded.** A bucket is copied only while it holds at most
//!   [`REPLICA_BYTES_MAX`] and all copies together at most
//!   [`REPLICAS_BYTES_MAX`]; past either, its copy is dropped and reads go
//!   to NATS (a read after [`RETRY_AFTER`] tries again).
//! - **A watch that fails or ends** (a missed heartbeat on a busy machine,
//!   NATS lost) empties the copy and starts a new watch at once: reads go
//!   to NATS until the new one has caught up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use futures::StreamExt as _;

use super::StoreId;

/// Largest bucket a node copies: past it, the copy would cost more memory
/// than its reads save.
pub const REPLICA_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most memory all of a node's copies take together.
pub const REPLICAS_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Per key held, beyond its key and value: the map entry, the revision.
const ENTRY_OVERHEAD: usize = 64;
/// How long after a copy is dropped (too big) the next read may start
/// another.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a failed watch waits before the next.
const WATCH_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// What the copy knows of one key.
struct Held {
    revision: u64,
    /// `None`: deleted.
    value: Option<Bytes>,
}

#[derive(Default)]
struct Copy {
    /// The watch has delivered the bucket's state as it was when it began.
    ready: bool,
    /// By encoded key.
    keys: HashMap<String, Held>,
    bytes: usize,
}

/// One bucket's copy.
pub(super) struct Replica {
    copy: Mutex<Copy>,
    /// Shared with every copy of this node.
    total: Arc<AtomicUsize>,
}

fn size(key: &str, value: Option<&Bytes>) -> usize {
    key.len() + value.map_or(0, Bytes::len) + ENTRY_OVERHEAD
}

impl Replica {
    /// The value of `key` when the copy is ready: `Some(None)` if absent.
    pub(super) fn get(&self, key: &str) -> Option<Option<Bytes>> {
        let copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if !copy.ready {
            return None;
        }
        Some(copy.keys.get(key).and_then(|held| held.value.clone()))
    }

    /// Applies a write at `revision` (`None`: a delete) unless the copy
    /// holds a newer one. Returns false if the copy outgrew its bounds
    /// (and is now dropped).
    pub(super) fn apply(&self, key: &str, revision: u64, value: Option<Bytes>) -> bool {
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if copy
            .keys
            .get(key)
            .is_some_and(|held| held.revision >= revision)
        {
            return true;
        }
        let added = size(key, value.as_ref());
        let removed = copy
            .keys
            .insert(key.to_string(), Held { revision, value })
            .map_or(0, |old| size(key, old.value.as_ref()));
        copy.bytes = copy.bytes + added - removed;
        let total = self.total.fetch_add(added, Ordering::Relaxed) + added - removed;
        self.total.fetch_sub(removed, Ordering::Relaxed);
        if copy.bytes > REPLICA_BYTES_MAX || total > REPLICAS_BYTES_MAX {
            self.drop_all(&mut copy);
            return false;
        }
        true
    }

    fn drop_all(&self, copy: &mut Copy) {
        self.total.fetch_sub(copy.bytes, Ordering::Relaxed);
        *copy = Copy::default();
    }
}

/// The copies of one node, by store.
#[derive(Default)]
pub(super) struct Replicas {
    copies: Mutex<HashMap<StoreId, Slot>>,
    total: Arc<AtomicUsize>,
}

enum Slot {
    Live(Arc<Replica>),
    /// Dropped at this instant; not tried again before [`RETRY_AFTER`].
    Dropped(std::time::Instant),
}

impl Replicas {
    /// The copy of `store`, starting one (with a watch of `bucket`) the
    /// first time.
    pub(super) fn of(self: &Arc<Self>, store: &StoreId, bucket: &Store) -> Option<Arc<Replica>> {
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        match copies.get(store) {
            Some(Slot::Live(replica)) => return Some(replica.clone()),
            Some(Slot::Dropped(at)) if at.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        let replica = Arc::new(Replica {
            copy: Mutex::default(),
            total: self.total.clone(),
        });
        copies.insert(store.clone(), Slot::Live(replica.clone()));
        tokio::spawn(follow(
            Arc::downgrade(self),
            store.clone(),
            bucket.clone(),
            Arc::downgrade(&replica),
        ));
        Some(replica)
    }

    /// The live copy of `store`, if there is one (for this node's writes).
    pub(super) fn live(&self, store: &StoreId) -> Option<Arc<Replica>> {
        match self
            .copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(store)
        {
            Some(Slot::Live(replica)) => Some(replica.clone()),
            _ => None,
        }
    }

    fn dropped(&self, store: &StoreId) {
        self.copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store.clone(), Slot::Dropped(std::time::Instant::now()));
    }
}

/// Why a watch stopped feeding a copy.
enum End {
    /// Nobody holds the copy any more.
    Unused,
    /// The copy is past its bounds: reads go to NATS.
    TooBig(String),
    /// The watch failed or ended: a new one starts.
    Lost(String),
}

/// Feeds a copy from watches of its bucket until the copy is no longer
/// used or too big; a lost watch is replaced by a new one.
async fn follow(replicas: Weak<Replicas>, store: StoreId, bucket: Store, replica: Weak<Replica>) {
    loop {
        let end = feed(&bucket, &replica).await;
        match replica.upgrade() {
            Some(replica) => {
                let mut copy = replica.copy.lock().unwrap_or_else(|e| e.into_inner());
                replica.drop_all(&mut copy);
            }
            None => return,
        }
        match end {
            End::Unused => return,
            End::TooBig(why) => {
                tracing::debug!("the copy of key-value store {store:?} is dropped: {why}");
                if let Some(replicas) = replicas.upgrade() {
                    replicas.dropped(&store);
                }
                return;
            }
            End::Lost(why) => {
                tracing::debug!("the copy of key-value store {store:?} starts again: {why}");
                tokio::time::sleep(WATCH_AGAIN_AFTER).await;
            }
        }
    }
}

async fn feed(bucket: &Store, replica: &Weak<Replica>) -> End {
    let mut stream = bucket.stream.clone();
    // The copy has caught up once the watch has delivered the bucket's
    // last write as of now: the last of its key, so the watch delivers it.
    // (The entries' `delta` is not a reliable end of the history: it was
    // seen stuck at 1.)
    let last = match stream.info().await {
        Ok(info) if info.state.bytes as usize > REPLICA_BYTES_MAX => {
            return End::TooBig(format!(
                "the bucket holds more than {REPLICA_BYTES_MAX} bytes"
            ));
        }
        Ok(info) if info.state.messages == 0 => 0,
        Ok(info) => info.state.last_sequence,
        Err(e) => return End::Lost(format!("its size could not be read: {e}")),
    };
    let mut watch = match bucket.watch_with_history(">").await {
        Ok(watch) => watch,
        Err(e) => return End::Lost(format!("the watch could not start: {e}")),
    };
    if last == 0
        && let Some(replica) = replica.upgrade()
    {
        replica.copy.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
    }
    while let Some(entry) = watch.next().await {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return End::Lost(format!("the watch failed: {e}")),
        };
        let Some(replica) = replica.upgrade() else {
            return End::Unused;
        };
        let value = (entry.operation == Operation::Put).then_some(entry.value);
        if !replica.apply(&entry.key, entry.revision, value) {
            return End::TooBig("it outgrew its bounds".to_string());
        }
        if entry.revision >= last {
            replica.copy.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
        }
    }
    End::Lost("the watch ended".to_string())
}
