//! The log pipeline: invocations hand their lines to a bounded queue; one task
//! batches them into the durable [`LogStore`] and fans them out to followers.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use updraft_core::LogEntry;
use updraft_state::LogStore;

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

#[derive(Clone)]
pub(crate) struct LogPipe {
    queue: mpsc::Sender<LogMsg>,
    follow: broadcast::Sender<(Arc<str>, LogEntry)>,
}

impl LogPipe {
    pub(crate) fn start(store: Arc<LogStore>) -> LogPipe {
        let (queue, mut rx) = mpsc::channel(LOG_QUEUE_MAX);
        let (follow, _) = broadcast::channel(FOLLOW_BUFFER);
        tokio::spawn(async move {
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
                let store = store.clone();
                let written = std::mem::take(&mut batch);
                let result = tokio::task::spawn_blocking(move || store.append(&written)).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("writing logs failed: {}", updraft_core::error::chain(&e))
                    }
                    Err(e) => tracing::error!(
                        "log writer task failed: {}",
                        updraft_core::error::chain(&e)
                    ),
                }
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        LogPipe { queue, follow }
    }

    pub(crate) fn push(&self, name: &Arc<str>, entry: LogEntry) {
        let _ = self.follow.send((name.clone(), entry.clone()));
        if self
            .queue
            .try_send(LogMsg::Entry(name.clone(), entry))
            .is_err()
        {
            tracing::warn!("log queue full: dropped a line of {name}");
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<(Arc<str>, LogEntry)> {
        self.follow.subscribe()
    }

    /// Waits until every line pushed so far is on disk.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(LogMsg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
