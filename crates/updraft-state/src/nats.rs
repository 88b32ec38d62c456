//! The connection of cluster mode: one NATS client with JetStream, shared
//! by every backend that keeps its state there ([`crate::kv::NatsKv`] so
//! far). Connecting checks what Updraft needs of the server, so a
//! misconfigured one is named at start-up, not at the first write.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{self, StorageType};
use futures::StreamExt as _;
use updraft_core::{Classify, ErrorKind, Failure};

use crate::kv::VALUE_BYTES_MAX;

/// How long connecting to an unreachable server may take before start-up
/// fails with its URL named.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a state operation waits for NATS (a request, a write's
/// acknowledgement) before it answers "unavailable": long enough for a
/// busy server, short enough that a client is not left hanging in an
/// outage. A write whose acknowledgement timed out may still land once
/// the connection is back: its outcome is unknown, not lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Room a stored message needs beyond its value: the subject (a key is up
/// to 3 × 512 bytes encoded) and headers.
pub(crate) const MESSAGE_OVERHEAD: usize = 8 * 1024;

/// Where the cluster's NATS is: `--cluster` and the `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT`, one or more servers of the same cluster.
    pub urls: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed), if the server wants one.
    #[serde(default)]
    pub credentials: Option<std::path::PathBuf>,
    /// Require TLS to every server.
    #[serde(default)]
    pub tls: bool,
    /// Copies JetStream keeps of every stream and bucket Updraft creates:
    /// 3 on a 3-server NATS cluster survives losing one server.
    #[serde(default = "one_replica")]
    pub replicas: usize,
}

fn one_replica() -> usize {
    1
}

/// Most replicas JetStream keeps of a stream.
pub const REPLICAS_MAX: usize = 5;

impl ClusterConfig {
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> ClusterConfig {
        ClusterConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            credentials: None,
            tls: false,
            replicas: 1,
        }
    }

    fn named(&self) -> String {
        self.urls.join(",")
    }
}

/// Why cluster mode could not start or reach its state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("no NATS URL is given: list one in `urls`, e.g. urls = [\"nats://127.0.0.1:4222\"]")]
    NoUrl,
    #[error(
        "replicas = {0}: JetStream keeps 1 to {REPLICAS_MAX} copies; use 1, or 3 on a 3-server NATS cluster"
    )]
    Replicas(usize),
    #[error(
        "cannot connect to NATS at {urls}: is nats-server running there, with JetStream (`-js`)? Check the URL"
    )]
    Connect {
        urls: String,
        #[source]
        source: Failure,
    },
    #[error(
        "NATS at {urls} has JetStream disabled: start nats-server with `-js` (or a `jetstream {{}}` block in its config)"
    )]
    NoJetStream {
        urls: String,
        #[source]
        source: Failure,
    },
    #[error(
        "NATS at {urls} takes messages of at most {max_payload} bytes (max_payload), and Updraft stores values up to {needed}: set `max_payload: 8MB` in nats-server's config"
    )]
    PayloadTooSmall {
        urls: String,
        max_payload: usize,
        needed: usize,
    },
    #[error("cannot read the NATS credentials file {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for ClusterError {
    fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::NoUrl | ClusterError::Replicas(_) | ClusterError::Credentials { .. } => {
                ErrorKind::Invalid
            }
            ClusterError::Connect { .. }
            | ClusterError::NoJetStream { .. }
            | ClusterError::PayloadTooSmall { .. } => ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        "cluster_unavailable"
    }
}

/// A connected cluster: the client and its JetStream context. Cheap to
/// clone; the client reconnects by itself when the server goes away.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) jetstream: async_nats::jetstream::Context,
    urls: String,
    /// Of every stream and bucket created.
    pub(crate) replicas: usize,
}

/// Asks JetStream for the account's info: a server without JetStream has
/// no one to answer, or answers an error. Read as plain JSON: the answer
/// grew fields across server versions.
async fn check_jetstream(client: &async_nats::Client) -> Result<(), Failure> {
    let answer = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.request("$JS.API.INFO", bytes::Bytes::new()),
    )
    .await
    .map_err(|e| Failure::context("JetStream did not answer in time", e))?
    .map_err(|e| Failure::context("JetStream did not answer", e))?;
    let info: serde_json::Value = serde_json::from_slice(&answer.payload)
        .map_err(|e| Failure::context("JetStream's answer is not JSON", e))?;
    match info.get("error") {
        None => Ok(()),
        Some(error) => Err(Failure::msg(format!("JetStream answered {error}"))),
    }
}

impl Cluster {
    /// Connects, then checks that JetStream is on and that a value of the
    /// largest size fits in one message.
    pub async fn connect(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.urls.is_empty() {
            return Err(ClusterError::NoUrl);
        }
        if !(1..=REPLICAS_MAX).contains(&config.replicas) {
            return Err(ClusterError::Replicas(config.replicas));
        }
        let urls = config.named();
        let mut options = async_nats::ConnectOptions::new()
            .name("updraft")
            .connection_timeout(CONNECT_TIMEOUT)
            .require_tls(config.tls);
        if let Some(path) = &config.credentials {
            options = options.credentials_file(path).await.map_err(|source| {
                ClusterError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        let client =
            options
                .connect(config.urls.clone())
                .await
                .map_err(|e| ClusterError::Connect {
                    urls: urls.clone(),
                    source: Failure::context("the connection failed", e),
                })?;
        let max_payload = client.server_info().max_payload;
        let needed = VALUE_BYTES_MAX + MESSAGE_OVERHEAD;
        if max_payload < needed {
            return Err(ClusterError::PayloadTooSmall {
                urls,
                max_payload,
                needed,
            });
        }
        check_jetstream(&client)
            .await
            .map_err(|source| ClusterError::NoJetStream {
                urls: urls.clone(),
                source,
            })?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .ack_timeout(REQUEST_TIMEOUT)
            .build(client);
        Ok(Cluster {
            jetstream,
            urls,
            replicas: config.replicas,
        })
    }

    /// The servers, as given.
    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// The KV bucket `name`; if it does not exist, `None`, or with `create`
    /// a new one: file storage, history 1, values up to
    /// [`VALUE_BYTES_MAX`]. Creating is idempotent across nodes.
    pub(crate) async fn key_value(
        &self,
        name: &str,
        create: bool,
    ) -> Result<Option<Store>, async_nats::Error> {
        self.key_value_aged(name, create, Duration::ZERO).await
    }

    /// [`Cluster::key_value`] whose entries expire `max_age` after their
    /// last write (zero: never).
    pub(crate) async fn key_value_aged(
        &self,
        name: &str,
        create: bool,
        max_age: Duration,
    ) -> Result<Option<Store>, async_nats::Error> {
        use async_nats::jetstream::context::KeyValueErrorKind;
        let js = &self.jetstream;
        match js.get_key_value(name).await {
            Ok(bucket) => return Ok(Some(bucket)),
            Err(e) if e.kind() == KeyValueErrorKind::GetBucket && !create => return Ok(None),
            Err(e) if e.kind() == KeyValueErrorKind::GetBucket => {}
            Err(e) => return Err(Box::new(e)),
        }
        // The stream behind a KV bucket, by the KV conventions, made
        // directly: the client's `create_key_value` first asks for account
        // details that NATS 2.9 does not answer in the form it parses.
        let config = stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(VALUE_BYTES_MAX + MESSAGE_OVERHEAD).unwrap_or(i32::MAX),
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: self.replicas,
            max_age,
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => Ok(Some(js.get_key_value(name).await?)),
            // Another node may have created it first; if not, the
            // creation's error is the one to tell.
            Err(create) => match js.get_key_value(name).await {
                Ok(bucket) => Ok(Some(bucket)),
                Err(_) => Err(Box::new(create)),
            },
        }
    }

    /// The last message of every subject under `filter` in `stream`, as it
    /// is now (`headers_only`: without payloads).
    pub(crate) async fn last_per_subject(
        &self,
        stream: &stream::Stream,
        filter: String,
        headers_only: bool,
    ) -> Result<Vec<async_nats::Message>, async_nats::Error> {
        self.read(stream, filter, DeliverPolicy::LastPerSubject, headers_only)
            .await
    }

    /// Every message under `filter` in `stream` as it is now, from `from`.
    pub(crate) async fn ordered(
        &self,
        stream: &stream::Stream,
        filter: String,
        from: DeliverPolicy,
    ) -> Result<Vec<async_nats::Message>, async_nats::Error> {
        self.read(stream, filter, from, false).await
    }

    async fn read(
        &self,
        stream: &stream::Stream,
        filter: String,
        deliver_policy: DeliverPolicy,
        headers_only: bool,
    ) -> Result<Vec<async_nats::Message>, async_nats::Error> {
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.jetstream.client().new_inbox(),
                filter_subject: filter,
                headers_only,
                deliver_policy,
                ..Default::default()
            })
            .await?;
        // Exactly what was there when the consumer was made: its pending
        // count then. Writes after it come later in the stream, and under
        // steady writes the count left would never reach zero.
        let mut remaining = consumer.cached_info().num_pending;
        let mut found = Vec::new();
        if remaining == 0 {
            return Ok(found);
        }
        let mut messages = consumer.messages().await?;
        while remaining > 0
            && let Some(message) = messages.next().await
        {
            found.push(message?.message);
            remaining -= 1;
        }
        Ok(found)
    }
}

/// A NATS client error as the boxed error the backends keep as a source.
pub(crate) fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> async_nats::Error {
    Box::new(e)
}

/// Writes `value` under `key` if it is still at `revision` (`None`: never
/// written, or deleted without a trace): a compare-and-swap on the key's
/// revision. `Ok(false)` if another writer changed it first.
pub(crate) async fn write_if(
    bucket: &Store,
    key: &str,
    revision: Option<u64>,
    value: bytes::Bytes,
) -> Result<bool, async_nats::Error> {
    Ok(write_if_revision(bucket, key, revision, value)
        .await?
        .is_some())
}

/// [`write_if`] that returns the new revision (`None`: a conflict).
pub(crate) async fn write_if_revision(
    bucket: &Store,
    key: &str,
    revision: Option<u64>,
    value: bytes::Bytes,
) -> Result<Option<u64>, async_nats::Error> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let result = match revision {
        Some(revision) => bucket
            .update(key, value, revision)
            .await
            .map_err(|e| (e.kind() == UpdateErrorKind::WrongLastRevision, boxed(e))),
        None => bucket
            .create(key, value)
            .await
            .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, boxed(e))),
    };
    match result {
        Ok(revision) => Ok(Some(revision)),
        Err((true, _)) => Ok(None),
        Err((false, e)) => Err(e),
    }
}

/// Whether a KV message holds a value (not a delete or purge marker).
pub(crate) fn is_live(message: &async_nats::Message) -> bool {
    let operation = message.headers.as_ref().and_then(|h| h.get("KV-Operation"));
    !matches!(operation.map(|v| v.as_str()), Some("DEL" | "PURGE"))
}
