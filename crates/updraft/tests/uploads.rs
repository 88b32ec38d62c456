//! Deploy bodies are spooled to disk as they arrive, not buffered whole
//! (issue 22): a 200 MB upload, one at a time or six at once, raises the
//! server's own memory by a small fraction of its size; one over the limit
//! is refused with 413 without being held; the temp files are gone after.
//!
//! Memory is sampled from `/proc/PID/status` every 2 ms until the response
//! has arrived, so a peak cannot fall between the samples and the end.
//! Two numbers: `RssAnon`, the memory the server allocated (what buffering
//! a body would raise), and `VmRSS`, which also counts the pages of files
//! the server has mapped. A deployed Wasm is compiled from a read-only
//! mapping of its spooled file; the pages the hash and the store read are
//! the page cache's, which the kernel already holds for the file just
//! written and reclaims at will, so they show in `VmRSS` but are not
//! buffering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;

/// The size of each upload.
const BODY_BYTES: usize = 200 << 20;
/// Largest growth of the server's own memory an upload may cause: its
/// socket and file buffers, the compiler's working memory for the small
/// component inside, and the allocator's slack. Buffering the body would
/// take 200 MiB, three times as much.
const GROWTH_MAX_MIB: u64 = 64;
/// Sent in chunks of this size, so the test itself holds little.
const CHUNK_BYTES: usize = 1 << 20;
static ZEROS: [u8; CHUNK_BYTES] = [0; CHUNK_BYTES];

/// `(VmRSS, RssAnon)` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Samples `pid`'s memory every 2 ms until stopped; the peaks of both.
struct Sampler {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut peak = memory_kib(pid);
                while !done.load(Ordering::Relaxed) {
                    let now = memory_kib(pid);
                    peak = (peak.0.max(now.0), peak.1.max(now.1));
                    std::thread::sleep(Duration::from_millis(2));
                }
                peak
            })
        };
        Sampler { done, thread }
    }

    /// Stops after one more sample; the peaks in MiB.
    fn stop(self) -> (u64, u64) {
        self.done.store(true, Ordering::Relaxed);
        let (vm, anon) = self.thread.join().unwrap();
        (vm / 1024, anon / 1024)
    }
}

/// LEB128 of `n`, as Wasm sizes are written.
fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A real component (http-chaos) grown to `total` bytes by a custom
/// section of zeros at its end, as a stream of 1 MiB chunks: a valid
/// deploy of that size, whose padding the compiler skips.
fn padded_component(total: usize) -> (reqwest::Body, usize) {
    let guest = std::fs::read(guest("http-chaos")).unwrap();
    let name = b"updraft-test-padding";
    let mut head = guest.clone();
    head.push(0); // custom section
    // The section's size counts its name and payload; the LEB128 of the
    // size is 4 bytes for any size near `total`.
    let payload = total - guest.len() - 1 - 4 - 1 - name.len();
    let mut size = leb128((1 + name.len() + payload) as u64);
    assert_eq!(size.len(), 4);
    head.append(&mut size);
    head.push(name.len() as u8);
    head.extend_from_slice(name);
    (zeros_after(head, payload), total)
}

/// `head`, then `zeros` zero bytes, as a stream.
fn zeros_after(head: Vec<u8>, zeros: usize) -> reqwest::Body {
    let chunks = (0..zeros.div_ceil(CHUNK_BYTES)).map(move |i| {
        let n = (zeros - i * CHUNK_BYTES).min(CHUNK_BYTES);
        Ok::<_, std::io::Error>(Bytes::from_static(&ZEROS[..n]))
    });
    let all = std::iter::once(Ok(Bytes::from(head))).chain(chunks);
    reqwest::Body::wrap_stream(futures::stream::iter(all))
}

/// `PUT /v1/functions/{name}` with `body` as the raw Wasm.
async fn deploy(server: &Server, name: &str, body: reqwest::Body) -> (u16, String) {
    let response = server
        .api()
        .put(server.url(&format!("/v1/functions/{name}")))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .timeout(Duration::from_secs(600))
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The files under the server's uploads dir (none between deploys).
fn spooled(server: &Server) -> Vec<String> {
    std::fs::read_dir(server.data_dir.join("scratch/uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A server with one small function deployed, so the compiler's first
/// allocations are in the baseline; its memory now.
async fn warm_server(dir: &std::path::Path) -> (Server, (u64, u64)) {
    let server = Server::start(dir);
    server.deploy_guest("warm", "http-chaos", "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (vm, anon) = memory_kib(server.child.id());
    (server, (vm / 1024, anon / 1024))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_deploy_is_spooled_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let (server, (vm_before, anon_before)) = warm_server(dir.path()).await;
    let sampler = Sampler::start(server.child.id());
    let (body, len) = padded_component(BODY_BYTES);
    let (status, answer) = deploy(&server, "big", body).await;
    let (vm_peak, anon_peak) = sampler.stop();
    assert_eq!(status, 201, "{answer}");
    // Stored and hashed whole, as any deploy.
    let info = server.get_json("/v1/functions/big").await;
    assert_eq!(info["versions"][0]["wasm_bytes"], len as u64, "{info}");
    eprintln!(
        "one 200 MiB deploy: RssAnon {anon_before} -> peak {anon_peak} MiB, \
         VmRSS {vm_before} -> peak {vm_peak} MiB"
    );
    assert!(
        anon_peak < anon_before + GROWTH_MAX_MIB,
        "the server's own memory grew from {anon_before} to {anon_peak} MiB for a 200 MiB upload"
    );
    assert_eq!(spooled(&server), Vec::<String>::new(), "temp files left");
    // It runs.
    let r = server
        .api()
        .post(server.url("/v1/functions/big/invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A body that is not Wasm is received whole (it is spooled before it is
/// looked at) and refused; here nothing is mapped beyond its first page,
/// so even `VmRSS` stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_body_that_is_not_wasm_never_lands_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (server, (vm_before, anon_before)) = warm_server(dir.path()).await;
    let sampler = Sampler::start(server.child.id());
    let body = zeros_after(b"not wasm".to_vec(), BODY_BYTES);
    let (status, answer) = deploy(&server, "junk", body).await;
    let (vm_peak, anon_peak) = sampler.stop();
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (400, "not_wasm"),
        "{answer}"
    );
    eprintln!(
        "one 200 MiB body that is not Wasm: RssAnon {anon_before} -> peak {anon_peak} MiB, \
         VmRSS {vm_before} -> peak {vm_peak} MiB"
    );
    assert!(
        vm_peak < vm_before + GROWTH_MAX_MIB,
        "RSS grew from {vm_before} to {vm_peak} MiB for a 200 MiB upload"
    );
    assert_eq!(spooled(&server), Vec::<String>::new(), "temp files left");
}

#[tokio::test(flavor = "multi_thread")]
async fn six_200_mb_deploys_at_once_do_not_take_six_times_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (server, (vm_before, anon_before)) = warm_server(dir.path()).await;
    let server = Arc::new(server);
    let sampler = Sampler::start(server.child.id());
    let deploys: Vec<_> = (0..6)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let (body, _) = padded_component(BODY_BYTES);
                deploy(&server, &format!("big{i}"), body).await
            })
        })
        .collect();
    for deploy in deploys {
        let (status, answer) = deploy.await.unwrap();
        assert_eq!(status, 201, "{answer}");
    }
    let (vm_peak, anon_peak) = sampler.stop();
    eprintln!(
        "six 200 MiB deploys at once: RssAnon {anon_before} -> peak {anon_peak} MiB, \
         VmRSS {vm_before} -> peak {vm_peak} MiB"
    );
    // Six bodies buffered would be 1200 MiB; spooled, the six connections
    // cost their buffers and the compiles run one at a time. (`VmRSS` can
    // reach the six files' size here: each deploy's mapped pages stay
    // mapped until it is recorded, and the six finish together.)
    assert!(
        anon_peak < anon_before + 2 * GROWTH_MAX_MIB,
        "the server's own memory grew from {anon_before} to {anon_peak} MiB for six uploads"
    );
    assert_eq!(spooled(&server), Vec::<String>::new(), "temp files left");
}

/// Sends a raw `PUT` deploy with `headers` and then `body_bytes` of zeros
/// (chunked when `chunked`), from a thread, and reads the answer: an
/// early answer is read even if the server stops reading the body.
fn raw_deploy(server: &Server, headers: &str, body_bytes: usize, chunked: bool) -> String {
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let request = format!(
        "PUT /v1/functions/huge HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/wasm\r\n{headers}\r\n",
        server.admin_key
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut left = body_bytes;
        while left > 0 {
            let n = left.min(CHUNK_BYTES);
            let sent = if chunked {
                writer
                    .write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|()| writer.write_all(&ZEROS[..n]))
                    .and_then(|()| writer.write_all(b"\r\n"))
            } else {
                writer.write_all(&ZEROS[..n])
            };
            if sent.is_err() {
                return; // the server answered and closed: expected
            }
            left -= n;
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n");
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    // Headers and the JSON error, which is short; stop once it is whole.
    while !String::from_utf8_lossy(&answer).contains("}}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    drop(stream);
    let _ = sender.join();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_over_the_limit_is_refused_without_being_held() {
    let dir = tempfile::tempdir().unwrap();
    let (server, (vm_before, anon_before)) = warm_server(dir.path()).await;
    let limit = updraft_gateway::DEPLOY_BYTES_MAX;

    // Announced too large: refused before a byte of the body is read.
    let answer = raw_deploy(
        &server,
        &format!("Content-Length: {}\r\n", limit + 1),
        CHUNK_BYTES,
        false,
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    assert!(answer.contains("over 256 MiB"), "{answer}");

    // Chunked, so its size shows only as it arrives: refused at the limit.
    let sampler = Sampler::start(server.child.id());
    let answer = raw_deploy(
        &server,
        "Transfer-Encoding: chunked\r\n",
        limit + CHUNK_BYTES,
        true,
    );
    let (vm_peak, anon_peak) = sampler.stop();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    eprintln!(
        "a 257 MiB chunked deploy: RssAnon {anon_before} -> peak {anon_peak} MiB, \
         VmRSS {vm_before} -> peak {vm_peak} MiB"
    );
    assert!(
        vm_peak < vm_before + GROWTH_MAX_MIB,
        "RSS grew from {vm_before} to {vm_peak} MiB for a refused upload"
    );
    assert_eq!(spooled(&server), Vec::<String>::new(), "temp files left");
}

/// A temp file a killed server left in the uploads dir is gone at the next
/// start.
#[test]
fn orphaned_uploads_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let orphan = dir.path().join("scratch/uploads/deploy-orphan");
    std::fs::write(&orphan, b"left by a crash").unwrap();
    server.kill();
    let server = Server::start(dir.path());
    assert!(!orphan.exists(), "the orphan survived a restart");
    assert_eq!(spooled(&server), Vec::<String>::new());
}
