//! Outgoing HTTP (`wasi:http/outgoing-handler`) for functions whose manifest
//! lists `allowed_outbound_hosts`: the allow-list, checked on the name and
//! again on every address it resolves to; timeouts capped by the
//! invocation's remaining time; one connection pool per deployed version,
//! kept across invocations; requests and bytes sent counted for the bill.
//!
//! Without a grant, every request is refused with `HTTP-request-denied`.
//!
//! wasi:sockets (0.2 and 0.3) follow the same list's `tcp`/`udp` entries
//! ([`Outbound::grant_sockets`]); without one, sockets stay denied.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use updraft_core::Manifest;
use updraft_core::outbound::{AllowedHosts, SocketProtocol};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::capability::Backends;

/// Idle connections kept per host, and for how long: enough for a function
/// that calls one API in a loop, without holding sockets nobody uses.
const IDLE_PER_HOST_MAX: usize = 16;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeouts when the guest sets none; the invocation's remaining time caps
/// them in any case.
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
const BETWEEN_BYTES_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// The manifest key named in refusals.
const KEY: &str = "allowed_outbound_hosts";

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// What one version may reach, and the pool its requests share.
pub struct OutboundGrant {
    hosts: Arc<AllowedHosts>,
    client: Client<Connector, CountedBody>,
}

/// The grant of a manifest that lists outbound hosts. The list was checked
/// at deploy; a stored list that no longer parses grants nothing (and says
/// so in the server's log).
pub(crate) fn grant(_tenant: &str, manifest: &Manifest, _: &Backends) -> Option<OutboundGrant> {
    if manifest.allowed_outbound_hosts.is_empty() {
        return None;
    }
    let hosts = match AllowedHosts::parse(&manifest.allowed_outbound_hosts) {
        Ok(hosts) => Arc::new(hosts),
        Err(e) => {
            tracing::error!(function = %manifest.name, "outbound HTTP disabled: {e}");
            return None;
        }
    };
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        hosts: hosts.clone(),
    });
    // `https://` URLs reach the TLS layer below with their scheme intact.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT_DEFAULT));
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth()
    });
    let tls = match tls {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!("outbound HTTP disabled: no TLS configuration: {e}");
            return None;
        }
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(IDLE_PER_HOST_MAX)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    Some(OutboundGrant { hosts, client })
}

/// Resolves names for the pool and drops every address the list does not
/// allow: a name that resolves to loopback, a private network or the
/// metadata service reaches it only if that address is listed.
#[derive(Clone)]
struct GuardedResolver {
    hosts: Arc<AllowedHosts>,
}

/// Every address of a name was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} resolves only to addresses that are not public ({addrs}); list the address in {KEY} to reach it"
)]
struct AddressRefused {
    name: String,
    addrs: String,
}

/// A name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {source}")]
struct NotResolved {
    name: String,
    source: io::Error,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let hosts = self.hosts.clone();
        Box::pin(async move {
            let name = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|source| NotResolved {
                    name: name.clone(),
                    source,
                })?
                .collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .filter(|a| hosts.address_allowed(a.ip()))
                .copied()
                .collect();
            if allowed.is_empty() {
                let addrs = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(AddressRefused { name, addrs }.into());
            }
            Ok(allowed.into_iter())
        })
    }
}

/// What one invocation's outgoing requests did: counted for the bill,
/// noted for its logs. Shared with the request futures, which may finish
/// after the hook call returned.
#[derive(Debug, Default)]
pub(crate) struct OutboundTally {
    pub(crate) requests: u64,
    pub(crate) bytes_out: u64,
    pub(crate) notes: Vec<String>,
}

/// Notes kept per invocation from outgoing requests.
const NOTES_MAX: usize = 8;

impl OutboundTally {
    fn note(&mut self, note: String) {
        if self.notes.len() < NOTES_MAX {
            self.notes.push(note);
        }
    }
}

/// The wasi:http hooks of one store: the version's grant (if any), the
/// invocation's deadline, and its tally.
pub(crate) struct Outbound {
    pub(crate) grant: Option<Arc<OutboundGrant>>,
    pub(crate) deadline: Instant,
    /// Made at the first outgoing request: most invocations send none,
    /// and the fresh-instance path should not pay for it.
    tally: Option<Arc<Mutex<OutboundTally>>>,
    /// Where the invocation is in its trace: each request carries it on.
    trace: Option<updraft_core::trace::TraceParent>,
    /// Makes each request's client span, when the trace is recorded.
    tracing: Option<crate::Tracing>,
}

impl Outbound {
    pub(crate) fn new(grant: Option<Arc<OutboundGrant>>, deadline: Instant) -> Outbound {
        Outbound {
            grant,
            deadline,
            tally: None,
            trace: None,
            tracing: None,
        }
    }

    /// The invocation's place in its trace, for the requests it sends.
    pub(crate) fn traced(
        &mut self,
        trace: Option<updraft_core::trace::TraceParent>,
        tracing: Option<crate::Tracing>,
    ) {
        self.trace = trace;
        self.tracing = tracing;
    }

    /// Starts a new invocation on a reused instance. The tally is kept (its
    /// contents were taken): the socket check holds it.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Opens wasi:sockets to what the grant's `tcp`/`udp` (or `*`) entries
    /// allow, with name lookups; each refusal is noted for the logs, each
    /// TCP connection counted as a request.
    pub(crate) fn grant_sockets(&mut self, wasi: &mut wasmtime_wasi::WasiCtxBuilder) {
        let Some(grant) = &self.grant else {
            return;
        };
        let hosts = grant.hosts.clone();
        let tcp = hosts.grants_sockets(SocketProtocol::Tcp);
        let udp = hosts.grants_sockets(SocketProtocol::Udp);
        if !tcp && !udp {
            return;
        }
        let tally = self.tally.get_or_insert_with(Arc::default).clone();
        wasi.allow_tcp(tcp)
            .allow_udp(udp)
            .allow_ip_name_lookup(true)
            .socket_addr_check(move |addr, used| {
                let allowed = socket_allowed(&hosts, addr, used);
                with_tally(&tally, |t| {
                    if !allowed {
                        t.note(socket_refusal(&hosts, addr, used));
                    } else if matches!(used, SocketAddrUse::TcpConnect) {
                        t.requests += 1;
                    }
                });
                Box::pin(async move { allowed })
            });
    }

    /// Takes what this invocation did.
    pub(crate) fn take_tally(&self) -> OutboundTally {
        let Some(tally) = &self.tally else {
            return OutboundTally::default();
        };
        match tally.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => OutboundTally::default(),
        }
    }
}

/// Whether a socket may use `addr` as `used` says, by [`AllowedHosts`]'
/// socket rules.
fn socket_allowed(hosts: &AllowedHosts, addr: SocketAddr, used: SocketAddrUse) -> bool {
    use SocketProtocol::{Tcp, Udp};
    let (ip, port) = (addr.ip(), addr.port());
    match used {
        // Local uses: the peers are what the list governs, and each is
        // checked (accept and receive included).
        SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => hosts.grants_sockets(Tcp),
        SocketAddrUse::UdpBind => hosts.grants_sockets(Udp),
        SocketAddrUse::TcpAccept | SocketAddrUse::TcpConnect => {
            hosts.socket_peer_allowed(Tcp, ip, port)
        }
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            hosts.socket_peer_allowed(Udp, ip, port)
        }
    }
}

/// A refused socket use, and the entry that would allow it.
fn socket_refusal(hosts: &AllowedHosts, addr: SocketAddr, used: SocketAddrUse) -> String {
    let (what, scheme) = match used {
        SocketAddrUse::TcpBind => ("binding a TCP socket to", "tcp"),
        SocketAddrUse::TcpListen => ("listening on", "tcp"),
        SocketAddrUse::TcpAccept => ("accepting a connection from", "tcp"),
        SocketAddrUse::TcpConnect => ("connecting to", "tcp"),
        SocketAddrUse::UdpBind => ("binding a UDP socket to", "udp"),
        SocketAddrUse::UdpSend => ("sending to", "udp"),
        SocketAddrUse::UdpReceive => ("receiving from", "udp"),
    };
    let host = match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!(
        "{what} {addr} refused: it is not in this function's {KEY} (listed: {}); add \"{scheme}://{host}:{}\" to updraft.toml",
        hosts.listed().join(", "),
        addr.port()
    )
}

fn with_tally(tally: &Mutex<OutboundTally>, f: impl FnOnce(&mut OutboundTally)) {
    if let Ok(mut t) = tally.lock() {
        f(&mut t);
    }
}

/// A sent request's response head, and the I/O that finishes it.
type Sent = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

type OutgoingFuture = Box<dyn Future<Output = Sent> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> OutgoingFuture {
        let tally = self.tally.get_or_insert_with(Arc::default).clone();
        let deadline = self.deadline;
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = format!("{}://{host}:{port}", if https { "https" } else { "http" });
        let Some(grant) = self.grant.clone() else {
            with_tally(&tally, |t| {
                t.note(format!(
                    "outgoing request to {target} refused: this function's {KEY} is empty; add \"{target}\" to it in updraft.toml"
                ))
            });
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        if !grant.hosts.allows(https, &host, port) {
            let listed = grant.hosts.listed().join(", ");
            let hint = match host.parse::<IpAddr>() {
                Ok(ip) if !updraft_core::outbound::is_public(ip) => {
                    " (an address that is not public is reached only when listed as an address, not through a wildcard)"
                }
                _ => "",
            };
            with_tally(&tally, |t| {
                t.note(format!(
                    "outgoing request to {target} refused: it is not in this function's {KEY} (listed: {listed}){hint}; add \"{target}\" to updraft.toml"
                ))
            });
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let timeouts = Timeouts::new(options, deadline);
        let mut span = self.tracing.as_ref().and_then(|tracing| {
            tracing.span(
                method_name(request.method()),
                crate::HostSpanKind::Client,
                &[
                    ("http.request.method", request.method().as_str()),
                    ("server.address", &host),
                    ("server.port", &port.to_string()),
                ],
            )
        });
        carry_trace(
            &mut request,
            span.as_ref().and_then(|s| s.position()).or(self.trace),
        );
        Box::new(async move {
            let response = send(grant, request, timeouts, &tally, &target).await;
            if let Some(mut span) = span.take() {
                match &response {
                    Ok((response, _)) => {
                        span.set(
                            "http.response.status_code",
                            response.status().as_u16().into(),
                        );
                        span.end(None);
                    }
                    Err(e) => span.end(Some(e.to_string())),
                }
            }
            response
        })
    }
}

/// OpenTelemetry names an HTTP client span by its method, from a known set.
fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "HTTP",
    }
}

/// Sets the request's `traceparent` to `at`, so the service it reaches
/// continues the trace, unless the guest set one of another trace (its
/// own tracing), which is left as it is.
fn carry_trace(
    request: &mut http::Request<WasiBody>,
    at: Option<updraft_core::trace::TraceParent>,
) {
    use updraft_core::trace::{TRACEPARENT, TraceParent};
    let Some(at) = at else { return };
    let theirs = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    if theirs.is_some_and(|theirs| theirs.trace_id != at.trace_id) {
        return;
    }
    if let Ok(value) = http::HeaderValue::from_bytes(&at.header_bytes()) {
        request.headers_mut().insert(TRACEPARENT, value);
    }
}

/// Sends an allowed request, counted, within its timeouts.
async fn send(
    grant: Arc<OutboundGrant>,
    request: http::Request<WasiBody>,
    timeouts: Timeouts,
    tally: &Arc<Mutex<OutboundTally>>,
    target: &str,
) -> Sent {
    with_tally(tally, |t| t.requests += 1);
    let request = request.map(|body| CountedBody {
        inner: body,
        tally: tally.clone(),
    });
    let sent = tokio::time::timeout(timeouts.head, grant.client.request(request)).await;
    let response = match sent {
        Err(_elapsed) => return Err(HttpError::ConnectionReadTimeout),
        Ok(Err(e)) => return Err(classify(e, target, tally)),
        Ok(Ok(response)) => response,
    };
    let response = response.map(|incoming| {
        TimedBody {
            inner: incoming,
            between: timeouts.between,
            deadline: timeouts.deadline,
            sleep: None,
        }
        .boxed_unsync()
    });
    let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
        Box::new(async { Ok(()) });
    Ok((response, io))
}

/// The timeouts of one request, each capped by the invocation's deadline.
struct Timeouts {
    /// Until the response's head: connecting, sending, the first byte.
    head: Duration,
    between: Duration,
    deadline: Instant,
}

impl Timeouts {
    fn new(options: Option<RequestOptions>, deadline: Instant) -> Timeouts {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let o = options.unwrap_or_default();
        let connect = o.connect_timeout.unwrap_or(CONNECT_TIMEOUT_DEFAULT);
        let first_byte = o.first_byte_timeout.unwrap_or(FIRST_BYTE_TIMEOUT_DEFAULT);
        Timeouts {
            head: connect.saturating_add(first_byte).min(remaining),
            between: o
                .between_bytes_timeout
                .unwrap_or(BETWEEN_BYTES_TIMEOUT_DEFAULT)
                .max(Duration::from_millis(1)),
            deadline,
        }
    }
}

/// The wasi:http error for a failed request, with a note for the logs
/// where the cause is the platform's rule rather than the network.
fn classify(
    e: hyper_util::client::legacy::Error,
    target: &str,
    tally: &Mutex<OutboundTally>,
) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            with_tally(tally, |t| {
                t.note(format!("outgoing request to {target} refused: {refused}"))
            });
            return HttpError::DestinationIpProhibited;
        }
        if err.downcast_ref::<NotResolved>().is_some() {
            return HttpError::DnsError {
                rcode: Some("address not available".to_string()),
                info_code: Some(0),
            };
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    HttpError::ConnectionTerminated
                }
                _ => HttpError::Connect(io::Error::new(io.kind(), io.to_string())),
            };
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
                _ => HttpError::TlsProtocolError,
            };
        }
        source = err.source();
    }
    if e.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::InternalError(Some(e.to_string()))
    }
}

/// The guest's request body, its bytes counted as they are sent.
pub(crate) struct CountedBody {
    inner: WasiBody,
    tally: Arc<Mutex<OutboundTally>>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            with_tally(&self.tally, |t| t.bytes_out += n);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body, cut when a frame takes longer than the between-bytes
/// timeout or the invocation's deadline passes.
struct TimedBody {
    inner: hyper::body::Incoming,
    between: Duration,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(HttpError::from)))
            }
            Poll::Pending => {
                let (between, deadline) = (self.between, self.deadline);
                let sleep = self.sleep.get_or_insert_with(|| {
                    let at = (Instant::now() + between).min(deadline);
                    Box::pin(tokio::time::sleep_until(at.into()))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
