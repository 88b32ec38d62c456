//! [`Logs`]: every function's log lines. Invocations hand their lines to a
//! bounded queue; one task batches them into the durable [`LogBackend`].
//! Followers get each line as it is pushed, or in cluster mode as any node
//! writes it (from the cluster's stream, so `logs -f` on one node shows
//! what every node runs).

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use updraft_core::{LogEntry, LogStream};
use updraft_sandbox::Report;
use updraft_state::LogBackend;

use crate::error::PlatformError;

/// Lines waiting to be written; when full, new lines are dropped (and counted)
/// rather than slowing invocations down.
pub const LOG_QUEUE_MAX: usize = 65_536;
/// Lines written per transaction at most.
const LOG_BATCH_MAX: usize = 4096;
/// Followers that fall this far behind skip lines.
const FOLLOW_BUFFER: usize = 4096;

pub(crate) enum LogMsg {
    Entry(Arc<str>, LogEntry),
    Flush(oneshot::Sender<()>),
}

/// The log service: what functions print, and what the platform says about
/// them (deploys, failed async attempts, budget crossings).
pub struct Logs {
    queue: mpsc::Sender<LogMsg>,
    follow: broadcast::Sender<(Arc<str>, LogEntry)>,
    store: LogBackend,
    /// Whether followers are fed from the backend (cluster mode) rather
    /// than by [`Logs::push`].
    shared: bool,
}

impl Logs {
    /// Starts the writer task, and in cluster mode the follower of every
    /// node's lines (call inside the runtime).
    pub(crate) async fn start(store: LogBackend) -> Result<Logs, PlatformError> {
        let (queue, mut rx) = mpsc::channel(LOG_QUEUE_MAX);
        let (follow, _) = broadcast::channel(FOLLOW_BUFFER);
        let shared = match store.subscribe().await? {
            Some(mut lines) => {
                let follow = follow.clone();
                tokio::spawn(async move {
                    use futures::StreamExt as _;
                    while let Some((key, entry)) = lines.next().await {
                        let _ = follow.send((Arc::from(key), entry));
                    }
                });
                true
            }
            None => false,
        };
        let writer = store.clone();
        tokio::spawn(async move {
            let store = writer;
            let mut batch = Vec::new();
            let mut flushes = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        LogMsg::Entry(name, entry) => batch.push((name.to_string(), entry)),
                        LogMsg::Flush(done) => flushes.push(done),
                    }
                    if batch.len() < LOG_BATCH_MAX {
                        next = rx.try_recv().ok();
                    }
                }
                let written = std::mem::take(&mut batch);
                if let Err(e) = store.append(written).await {
                    tracing::error!("writing logs failed: {}", updraft_core::error::chain(&e));
                }
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Ok(Logs {
            queue,
            follow,
            store,
            shared,
        })
    }

    fn push(&self, name: &Arc<str>, entry: LogEntry) {
        if !self.shared {
            let _ = self.follow.send((name.clone(), entry.clone()));
        }
        if self
            .queue
            .try_send(LogMsg::Entry(name.clone(), entry))
            .is_err()
        {
            tracing::warn!("log queue full: dropped a line of {name}");
        }
    }

    /// The lines a guest printed, from its report.
    pub(crate) fn report(&self, key: &Arc<str>, report: &Report) {
        let ts = crate::now_ms();
        for (stream, line) in &report.logs {
            self.push(key, LogEntry::new(ts, &report.invocation_id, *stream, line));
        }
    }

    /// A line of the platform's own about a function.
    pub(crate) fn platform(&self, key: &Arc<str>, message: &str) {
        self.push(
            key,
            LogEntry::new(crate::now_ms(), "-", LogStream::Platform, message),
        );
    }

    /// Every log line from now on, of every function, by function key
    /// (`tenant/name`): filter by tenant before showing them to anyone.
    pub fn follow(&self) -> broadcast::Receiver<(Arc<str>, LogEntry)> {
        self.follow.subscribe()
    }

    /// The last `n` entries of the function `key`, including every line
    /// pushed so far.
    pub(crate) async fn tail(&self, key: &str, n: usize) -> Result<Vec<LogEntry>, PlatformError> {
        self.flush().await;
        Ok(self.store.tail(key, n).await?)
    }

    /// Removes every entry of the function `key`.
    pub(crate) async fn delete_function(&self, key: &str) -> Result<(), PlatformError> {
        Ok(self.store.delete_function(key).await?)
    }

    /// Waits until every line pushed so far is on disk.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(LogMsg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
