//! Host-based routing end to end (`[http] base_domain`): a request for
//! `<tenant>.<base_domain>` reaches that tenant's function by its plain
//! path, so each tenant is a browser origin of its own and its cookies
//! stay there; path routing (`/~tenant`) keeps working on other hosts; and
//! an Updraft key never reaches a guest in either mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;

use common::*;

const BASE: &str = "functions.example";

/// A server with `base_domain = BASE`, and a key for each of `tenants`.
fn start(dir: &std::path::Path, tenants: &[&str]) -> (Server, Vec<String>) {
    let config = dir.join("server.toml");
    std::fs::write(&config, format!("[http]\nbase_domain = \"{BASE}\"\n")).unwrap();
    let server = Server::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let keys = tenants
        .iter()
        .map(|tenant| {
            let key = server.cli_ok(&["keys", "create", "--tenant", tenant]);
            key.trim().to_string()
        })
        .collect();
    (server, keys)
}

/// Deploys http-chaos as `tenant`'s `chaos` on `/chaos/...`, with its
/// tenant's name in the environment (`/chaos/env?key=WHO` says whose it is).
fn deploy_chaos(server: &Server, key: &str, tenant: &str) {
    let manifest = server.write_manifest(
        "chaos",
        "http-chaos",
        &format!("route = \"/chaos/...\"\n[env]\nWHO = \"{tenant}\""),
    );
    let out = server.cli_as(key, &["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that resolves every name under BASE to the server, as a
/// wildcard DNS record would: URLs carry the real host names.
fn resolving_client(server: &Server, tenants: &[&str]) -> reqwest::Client {
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let mut builder = reqwest::Client::builder().resolve(BASE, addr);
    for tenant in tenants {
        builder = builder.resolve(&format!("{tenant}.{BASE}"), addr);
    }
    builder.build().unwrap()
}

/// `http://{host}:{port}{path}`.
fn at(server: &Server, host: &str, path: &str) -> String {
    let port = server.url.rsplit(':').next().unwrap();
    format!("http://{host}:{port}{path}")
}

async fn text(response: reqwest::Response) -> (u16, String) {
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_is_served_on_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let (server, keys) = start(dir.path(), &["acme", "bravo"]);
    deploy_chaos(&server, &keys[0], "acme");
    deploy_chaos(&server, &keys[1], "bravo");
    let tenants = ["acme", "bravo", "nobody", "a.b"];
    let client = resolving_client(&server, &tenants);
    let who = |host: String| {
        let url = at(&server, &host, "/chaos/env?key=WHO");
        let client = client.clone();
        async move { text(client.get(url).send().await.unwrap()).await }
    };

    // The same path, two hosts, two tenants' functions.
    assert_eq!(who(format!("acme.{BASE}")).await, (200, "acme".into()));
    assert_eq!(who(format!("bravo.{BASE}")).await, (200, "bravo".into()));
    // The host's case and port do not matter (sent as a raw Host header).
    let response = get_with_host(&server, "/chaos/env?key=WHO", "BRAVO.Functions.Example:1");
    assert_eq!(text(response.await).await, (200, "bravo".into()));

    // The function sees its plain path, and on a tenant's host `/~other`
    // is only a path of that tenant's: acme's function is never served on
    // bravo's origin.
    let url = at(&server, &format!("acme.{BASE}"), "/chaos/headers");
    let (status, seen) = text(client.get(url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(seen.starts_with("path: /chaos/headers\n"), "{seen}");
    let url = at(
        &server,
        &format!("bravo.{BASE}"),
        "/~acme/chaos/env?key=WHO",
    );
    let (status, body) = text(client.get(url).send().await.unwrap()).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "route_not_found"),
        "{body}"
    );

    // An unknown tenant's host: a 404 that says the host names no tenant.
    for host in [format!("nobody.{BASE}"), format!("a.b.{BASE}")] {
        let (status, body) = who(host.clone()).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (404, "route_not_found"),
            "{body}"
        );
        assert!(
            error_message(&body).contains("check the host name"),
            "{host}: {body}"
        );
    }
    // A known tenant, a path it does not serve: the usual 404.
    let url = at(&server, &format!("acme.{BASE}"), "/nothing");
    let (status, body) = text(client.get(url).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(error_message(&body).contains("serves /nothing"), "{body}");

    // Path mode stays, on the bare base domain and on any other host.
    assert_eq!(
        text(
            client
                .get(at(&server, BASE, "/~acme/chaos/env?key=WHO"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (200, "acme".into())
    );
    assert_eq!(
        text(
            client
                .get(server.url("/~bravo/chaos/env?key=WHO"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (200, "bravo".into())
    );
    // The API answers on the base domain (and any host: no route can take
    // /v1 or /healthz).
    let (status, _) = text(
        client
            .get(at(&server, BASE, "/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let listed = client
        .get(at(&server, BASE, "/v1/functions"))
        .bearer_auth(&keys[0])
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(listed["functions"][0]["name"], "chaos", "{listed}");
}

/// What a browser keeps of `Set-Cookie` (RFC 6265, only what these tests
/// need): a cookie without `Domain` goes back to the host that set it
/// alone; one with `Domain=D` to D and every host under it. `BASE` is
/// taken as not on the Public Suffix List, the case host mode must hold in.
#[derive(Default)]
struct Jar(Vec<(String, bool, String)>);

impl Jar {
    fn store(&mut self, host: &str, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let mut parts = value.split(';').map(str::trim);
            let pair = parts.next().unwrap().to_string();
            let domain = parts.find_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.eq_ignore_ascii_case("domain")
                    .then(|| value.trim_start_matches('.').to_ascii_lowercase())
            });
            match domain {
                Some(d) if host == d || host.ends_with(&format!(".{d}")) => {
                    self.0.push((d, false, pair))
                }
                Some(_) => {} // a browser refuses a foreign domain
                None => self.0.push((host.to_string(), true, pair)),
            }
        }
    }

    fn header_for(&self, host: &str) -> Option<String> {
        let sent: Vec<&str> = self
            .0
            .iter()
            .filter(|(d, host_only, _)| {
                host == d || (!host_only && host.ends_with(&format!(".{d}")))
            })
            .map(|(_, _, pair)| pair.as_str())
            .collect();
        (!sent.is_empty()).then(|| sent.join("; "))
    }
}

/// `GET path` on `host` as a browser with `jar` would send it, storing
/// what comes back: the status and what the function saw of cookies.
async fn browse(
    client: &reqwest::Client,
    server: &Server,
    jar: &mut Jar,
    host: &str,
    path: &str,
) -> (u16, String) {
    let mut request = client.get(at(server, host, path));
    if let Some(cookie) = jar.header_for(host) {
        request = request.header(reqwest::header::COOKIE, cookie);
    }
    let response = request.send().await.unwrap();
    jar.store(host, &response);
    text(response).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_cookies_stay_on_its_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (server, keys) = start(dir.path(), &["acme", "bravo"]);
    deploy_chaos(&server, &keys[0], "acme");
    deploy_chaos(&server, &keys[1], "bravo");
    let client = resolving_client(&server, &["acme", "bravo"]);
    let (acme, bravo) = (format!("acme.{BASE}"), format!("bravo.{BASE}"));

    // Host mode: acme's session cookie, and one it tries to toss onto the
    // whole base domain, which the gateway makes host-only.
    let mut jar = Jar::default();
    let set = "/chaos/cookie?set=session%3Dacme-secret%3B%20Path%3D%2F";
    assert_eq!(browse(&client, &server, &mut jar, &acme, set).await.0, 200);
    let toss = format!("/chaos/cookie?set=tossed%3D1%3B%20Domain%3D{BASE}%3B%20Path%3D%2F");
    let response = client.get(at(&server, &acme, &toss)).send().await.unwrap();
    let cookie = response.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cookie, "tossed=1; Path=/",
        "the Domain attribute is dropped"
    );
    jar.store(&acme, &response);

    let (status, seen) = browse(&client, &server, &mut jar, &bravo, "/chaos/cookie").await;
    assert_eq!(
        (status, seen.as_str()),
        (200, "no cookie"),
        "bravo sees none of acme's cookies"
    );
    let (status, seen) = browse(&client, &server, &mut jar, &acme, "/chaos/cookie").await;
    assert_eq!(status, 200);
    assert_eq!(
        seen, "cookie: session=acme-secret; tossed=1",
        "acme keeps its own"
    );

    // Path mode, for contrast: one origin for all tenants, so a browser
    // hands acme's cookie to bravo's function (the risk docs/api.md names).
    let mut jar = Jar::default();
    let host = "127.0.0.1";
    let set = "/~acme/chaos/cookie?set=session%3Dacme-secret%3B%20Path%3D%2F";
    assert_eq!(browse(&client, &server, &mut jar, host, set).await.0, 200);
    let (_, seen) = browse(&client, &server, &mut jar, host, "/~bravo/chaos/cookie").await;
    assert_eq!(seen, "cookie: session=acme-secret");
}

/// An Updraft key sent to a public route on a tenant's host is taken off
/// before the guest runs, however it is written; the function's own
/// credentials pass.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_on_a_tenants_host_never_sees_an_updraft_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, keys) = start(dir.path(), &["acme", "bravo"]);
    deploy_chaos(&server, &keys[1], "bravo");
    let client = resolving_client(&server, &["bravo"]);
    let url = at(&server, &format!("bravo.{BASE}"), "/chaos/headers");
    let acme_key = format!("Bearer {}", keys[0]);
    let bravo_key = format!("Bearer {}", keys[1]);
    let admin_key = format!("bearer  {}", server.admin_key);
    let tabbed = format!("Bearer\t{}", keys[0]);
    for sent in [&acme_key, &bravo_key, &admin_key, &tabbed] {
        let response = client
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, sent.as_str())
            .send()
            .await
            .unwrap();
        let (status, seen) = text(response).await;
        assert_eq!(status, 200);
        let seen = seen.to_lowercase();
        assert!(
            !seen.contains("upd_") && !seen.contains("authorization"),
            "{seen}"
        );
    }
    let response = client
        .get(&url)
        .header(reqwest::header::AUTHORIZATION, "Bearer the-functions-own")
        .send()
        .await
        .unwrap();
    let (status, seen) = text(response).await;
    assert_eq!(status, 200);
    assert!(
        seen.contains("authorization: Bearer the-functions-own"),
        "{seen}"
    );
}

/// `GET path` on the server's address with a raw `Host` header.
async fn get_with_host(server: &Server, path: &str, host: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.url(path))
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .unwrap()
}
