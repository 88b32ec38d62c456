//! The listener: accepts connections under a global cap and a cap per client
//! address, gives each a header-read timeout (which also closes kept-alive
//! connections that send no next request), and on shutdown stops accepting,
//! then lets in-flight requests finish.
//!
//! A slow client (slowloris: headers sent a line at a time) holds a
//! connection for at most the header timeout, and one address cannot take
//! more than its share of the connections, so other clients keep being served.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Default time a client has to send a request's headers, and to start the
/// next request on a kept-alive connection: generous for real clients on
/// slow links, short enough that a slowloris cannot hold sockets for long.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default cap on open connections: well under the usual 65,536 descriptors.
pub const CONNECTIONS_MAX_DEFAULT: usize = 20_000;
/// Default cap per client address: room for a load generator or a busy
/// proxy, far below the global cap so one address cannot take it all.
pub const CONNECTIONS_PER_CLIENT_MAX_DEFAULT: usize = 2_048;
/// Pause after `accept` fails (out of descriptors): retrying at once spins.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the listener allows; `[http]` in the server config.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub connections_max: usize,
    pub connections_per_client_max: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_client_max: CONNECTIONS_PER_CLIENT_MAX_DEFAULT,
        }
    }
}

/// Open connections, in all and per client address.
struct Counts {
    limits: ServeLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; counted until dropped.
struct Admitted {
    counts: Arc<Counts>,
    client: IpAddr,
}

impl Counts {
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_client) = &mut *open;
        if *total >= self.limits.connections_max {
            return Err("connections_max");
        }
        let mine = per_client.entry(client).or_insert(0);
        if *mine >= self.limits.connections_per_client_max {
            return Err("connections_per_client_max");
        }
        *mine += 1;
        *total += 1;
        Ok(Admitted {
            counts: self.clone(),
            client,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let counts = Arc::new(Counts {
        limits,
        open: Mutex::default(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = match counts.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(limit) => {
                // Closed at once: cheaper than a response, and the client
                // sees it as a refused connection to retry later.
                tracing::debug!(client = %peer.ip(), "connection refused: {limit} reached");
                continue;
            }
        };
        // Responses are small and written in pieces (headers, chunks, the
        // chunked terminator); without TCP_NODELAY a piece can wait ~40 ms
        // for the client's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(admitted);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown: requests still running after {}s were cut",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_client() {
        let counts = Arc::new(Counts {
            limits: ServeLimits {
                connections_max: 3,
                connections_per_client_max: 2,
                ..ServeLimits::default()
            },
            open: Mutex::default(),
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = counts.admit(a).unwrap();
        let _a2 = counts.admit(a).unwrap();
        assert_eq!(counts.admit(a).err(), Some("connections_per_client_max"));
        let _b1 = counts.admit(b).unwrap();
        assert_eq!(counts.admit(b).err(), Some("connections_max"));
        drop(a1);
        assert!(
            counts.admit(b).is_ok(),
            "a closed connection frees its place"
        );
    }
}
