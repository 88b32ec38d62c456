//! Slow and greedy clients: a slowloris (headers a line at a time) is reaped
//! by the header-read timeout while other clients keep being served; an
//! idle kept-alive connection is closed the same way; one address cannot
//! open more than `[http] connections_per_client_max` connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn start(dir: &std::path::Path, http: &str) -> Server {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join("server.toml");
    std::fs::write(&config, format!("[http]\n{http}")).unwrap();
    Server::start_with(&data, &["--config", config.to_str().unwrap()])
}

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Waits until the server closes `stream` (a read gives EOF or an error).
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_is_reaped_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "header_read_timeout_ms = 1000\n");
    let addr = addr(&server);

    // 200 connections, each sending a header line every 300 ms, forever:
    // only the server's timeout ends them.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .unwrap();
            let (mut read, mut write) = stream.into_split();
            let trickle = async move {
                for i in 0u64.. {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if write
                        .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            };
            let reaped = async move { closed_by_server(&mut read).await };
            tokio::select! {
                () = reaped => {},
                () = trickle => {},
            }
        }));
    }

    // Meanwhile a normal client is served, over and over.
    let client = client();
    for _ in 0..20 {
        let r = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every slow connection is closed by the server (the trickle alone
    // would keep it open for ever).
    let all = futures::future::join_all(slow);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("slow connections still open a minute later");
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "header_read_timeout_ms = 500\n");
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // No next request: the server closes the connection.
    tokio::time::timeout(Duration::from_secs(60), closed_by_server(&mut stream))
        .await
        .expect("an idle connection still open a minute later");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_more_than_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), "connections_per_client_max = 5\n");
    let addr = addr(&server);
    // Five idle connections hold this address's share (each has sent a
    // request, so the server has surely counted it).
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        held.push(stream);
    }
    // The sixth is closed without an answer.
    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    let _ = sixth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = sixth.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // One closed, the place is free again.
    drop(held.pop());
    wait_until(
        "a connection after one was closed",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let mut stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            if answer.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!("answer {:?}", String::from_utf8_lossy(&answer)))
            }
        },
    )
    .await;
}
