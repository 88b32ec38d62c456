//! The cluster's usage log (cluster mode): every node publishes what its
//! invocations used to one JetStream stream, and every node reads the whole
//! stream, in order, into its own usage store. So any node answers usage,
//! bills and budgets for the whole cluster, and a bill is still
//! reproducible from the raw records.
//!
//! - **Records** are batches of bytes (metering encodes them) in the stream
//!   `UPDRAFT_USAGE`, file storage, kept for the records' retention. A
//!   batch published again after a lost acknowledgement carries the same
//!   `Nats-Msg-Id` and is stored once.
//! - **Budgets** are in the KV bucket `updraft-budgets` (`budget.{tenant}`);
//!   every node watches it. A budget crossing is claimed there too
//!   (`crossed.{tenant}.{month}.{kind}`), so of the nodes that all see it,
//!   exactly one tells the tenant.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use updraft_core::Failure;

use crate::error::StateError;
use crate::nats::{Cluster, boxed, write_if};

/// The stream of every node's usage records.
const STREAM: &str = "UPDRAFT_USAGE";
const SUBJECT: &str = "updraft.usage";
/// Budgets and the crossings already told.
const BUDGETS: &str = "updraft-budgets";
const BUDGET_PREFIX: &str = "budget.";

/// How long a published batch's id is remembered: a publish retried later
/// than this after a lost acknowledgement is stored twice. Also covers a
/// storage sample's id, one per tenant and sample slot (at most a day).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);

fn unavailable(what: &'static str) -> impl Fn(async_nats::Error) -> StateError {
    move |e| StateError::Unavailable(Failure::boxed(what, e))
}

/// A change to a tenant's budget, as the bucket's watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetChange {
    pub tenant: String,
    /// The budget as stored (`None`: removed).
    pub value: Option<Bytes>,
    /// The bucket's revision of the change: of two changes of one tenant,
    /// the higher is the later.
    pub revision: u64,
}

/// A bucket entry as a budget change (an empty value is a removal).
fn change(tenant: &str, entry: async_nats::jetstream::kv::Entry) -> BudgetChange {
    let removed = entry.operation != Operation::Put || entry.value.is_empty();
    BudgetChange {
        tenant: tenant.to_string(),
        value: (!removed).then_some(entry.value),
        revision: entry.revision,
    }
}

/// A batch of records as the stream holds it.
#[derive(Debug, Clone)]
pub struct Batch {
    pub sequence: u64,
    /// The id it was published under.
    pub id: String,
    pub records: Bytes,
}

/// The usage stream and the budgets bucket.
pub struct NatsUsage {
    cluster: Cluster,
    stream: stream::Stream,
    budgets: Store,
}

impl NatsUsage {
    /// Opens them, creating them the first time; records are kept for
    /// `retention`.
    pub async fn open(cluster: &Cluster, retention: Duration) -> Result<NatsUsage, StateError> {
        let failed = unavailable("opening the usage log failed");
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECT.to_string()],
            storage: StorageType::File,
            max_age: retention,
            duplicate_window: DUPLICATE_WINDOW.min(retention),
            num_replicas: cluster.replicas,
            ..Default::default()
        };
        let stream = cluster
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| failed(boxed(e)))?;
        let budgets = cluster
            .key_value(BUDGETS, true)
            .await
            .map_err(&failed)?
            .ok_or_else(|| failed(Box::from("the budgets bucket is missing")))?;
        Ok(NatsUsage {
            cluster: cluster.clone(),
            stream,
            budgets,
        })
    }

    /// Publishes a batch of records and waits for JetStream to store it,
    /// once per `id` within [`DUPLICATE_WINDOW`].
    pub async fn publish(&self, batch: Bytes, id: &str) -> Result<(), StateError> {
        let failed = unavailable("publishing usage records failed");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        self.cluster
            .jetstream
            .publish_with_headers(SUBJECT, headers, batch)
            .await
            .map_err(|e| failed(boxed(e)))?
            .await
            .map_err(|e| failed(boxed(e)))?;
        Ok(())
    }

    /// The sequence of the last batch stored (0: none yet).
    pub async fn last_sequence(&self) -> Result<u64, StateError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable("reading the usage log failed")(boxed(e)))?;
        Ok(info.state.last_sequence)
    }

    /// Every batch after sequence `after`, in order, as it is stored.
    /// Batches aged out are skipped. The stream ends if the connection is
    /// lost for good; follow again from the last sequence seen.
    pub async fn follow(
        &self,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Batch, StateError>>, StateError> {
        let failed = unavailable("following the usage log failed");
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.cluster.jetstream.client().new_inbox(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed(boxed(e)))?;
        let messages = consumer.messages().await.map_err(|e| failed(boxed(e)))?;
        Ok(messages
            .map(move |message| {
                let message = message.map_err(|e| failed(boxed(e)))?;
                let info = message.info().map_err(&failed)?;
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                Ok(Batch {
                    sequence: info.stream_sequence,
                    id,
                    records: message.message.payload,
                })
            })
            .boxed())
    }

    /// Every tenant's budget as stored now.
    pub async fn budget_list(&self) -> Result<Vec<BudgetChange>, StateError> {
        let failed = unavailable("reading budgets failed");
        let mut keys = self.budgets.keys().await.map_err(|e| failed(boxed(e)))?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed(boxed(e)))?;
            let Some(tenant) = key.strip_prefix(BUDGET_PREFIX) else {
                continue;
            };
            if let Some(entry) = self
                .budgets
                .entry(&key)
                .await
                .map_err(|e| failed(boxed(e)))?
            {
                found.push(change(tenant, entry));
            }
        }
        Ok(found)
    }

    /// Sets (`None`: removes, as an empty value) a tenant's budget for
    /// every node; the change's revision.
    pub async fn set_budget(&self, tenant: &str, value: Option<Bytes>) -> Result<u64, StateError> {
        self.budgets
            .put(
                format!("{BUDGET_PREFIX}{tenant}"),
                value.unwrap_or_default(),
            )
            .await
            .map_err(|e| unavailable("writing the budget failed")(boxed(e)))
    }

    /// Every budget as it is now, then every change any node makes.
    pub async fn budgets(&self) -> Result<BoxStream<'static, BudgetChange>, StateError> {
        let watch = self
            .budgets
            .watch_with_history(format!("{BUDGET_PREFIX}>"))
            .await
            .map_err(|e| unavailable("watching budgets failed")(boxed(e)))?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = entry.ok()?;
                let tenant = entry.key.strip_prefix(BUDGET_PREFIX)?.to_string();
                Some(change(&tenant, entry))
            })
            .boxed())
    }

    /// Claims telling the tenant of a budget crossing (`what`: tenant,
    /// month and kind, dot-separated): `true` for exactly one caller.
    pub async fn claim(&self, what: &str) -> Result<bool, StateError> {
        write_if(
            &self.budgets,
            &format!("crossed.{what}"),
            None,
            Bytes::from_static(b"1"),
        )
        .await
        .map_err(unavailable("claiming a budget alert failed"))
    }
}
