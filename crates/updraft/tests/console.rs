//! The web console at `/ui`, in a real browser: headless Chromium driven
//! over WebDriver (Debian's `chromium` and `chromium-driver`). It signs in
//! with the admin key (after a wrong key shows the API's message, and Tab
//! finds the skip link first), sees a function deployed through the API
//! appear, invokes it from the page (sync, then async with its status),
//! reads the usage chart's bars and the budget gauge, rolls back with a
//! click (checked through the API), browses a key-value store and a blob
//! container, sees a queue's depth, redrives a dead letter (checked
//! through the usage records: the call ran again) and follows logs live.
//! Then another tenant's key sees none of it, and revoking that key signs
//! the console out, saying why. A screenshot of each page goes to
//! `target/console-screenshots/` for people to look at, two of them at a
//! phone's width, where nothing may scroll sideways.
//!
//! The test starts chromedriver itself on a port picked at run time, bound
//! to 127.0.0.1, in a process group of its own that a guard kills, browser
//! and all, however the test ends. Every wait polls the page for a
//! condition; none sleeps a fixed time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(100);
/// The window of the desktop screenshots, and the phone's.
const DESKTOP: (u32, u32) = (1280, 1000);
const PHONE: (u32, u32) = (375, 812);

const INSTALL_HINT: &str = "the console test drives headless Chromium: install it with \
     `apt-get install chromium chromium-driver` (or run scripts/setup.sh test, as root)";

/// A program on the PATH, or in /usr/bin.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Where screenshots go: `target/console-screenshots`, the target dir
/// being `CARGO_TARGET_DIR` when it is absolute (a relative one is relative
/// to wherever cargo ran, which a test cannot know), else the one this
/// test binary was built into (`target/debug/deps/console-…`).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| root().join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver and the browser it starts, in a process group of their
/// own: dropping this kills the whole group.
struct Driver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Driver {
    async fn start(dir: &Path) -> Driver {
        let chromedriver =
            find_program(&["chromedriver"]).unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let log = dir.join("chromedriver.log");
        // A free port now; chromedriver binds it a moment later. If another
        // process takes it in between, the start fails and is tried again.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(&chromedriver)
                // No --allowed-ips: with it chromedriver listens on every
                // interface; without, on the loopback only.
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            match driver.wait_ready().await {
                Ok(()) => return driver,
                Err(e) => last_error = e,
            }
        }
        panic!("chromedriver did not start: {last_error}");
    }

    /// Polls `/status` until the driver says it is ready.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = client();
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("it exited ({status}): {}", self.log_tail()));
            }
            if let Ok(response) = client.get(format!("{}/status", self.url)).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {WAIT_MAX:?}: {}", self.log_tail()));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text[text.floor_char_boundary(start)..].to_string()
    }

    /// A headless browser session with its profile in `profile`.
    async fn session(&self, profile: &Path) -> Client {
        let browser = find_program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": browser,
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox
                    // cannot start; the pages are our own.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", self.log_tail()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is chromedriver's (process_group(0)), and so are the
        // browser's processes: none outlives the test.
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page, with the helpers the test needs.
struct Page<'a> {
    browser: &'a Client,
    shots: PathBuf,
}

impl Page<'_> {
    /// Waits for an element matching `css`.
    async fn find(&self, css: &str) -> Element {
        let found = self
            .browser
            .wait()
            .at_most(WAIT_MAX)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(e) => panic!("no {css} on the page: {e}\n{}", self.text().await),
        }
    }

    /// Waits until `script` (the body of a function) returns something
    /// other than null, false or undefined; returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let value = self.browser.execute(script, Vec::new()).await.unwrap();
            if !value.is_null() && value != false {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the page shows\n{}",
                self.text().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until nothing on the page is wider than the window (nothing
    /// scrolls sideways); fails naming what sticks out.
    async fn fits_width(&self, what: &str) {
        let script = "if (document.documentElement.scrollWidth <= window.innerWidth) return true; \
            return [...document.querySelectorAll('body *')] \
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
              .slice(0, 8) \
              .map(e => `${e.tagName.toLowerCase()}.${e.getAttribute('class')} to ${Math.round(e.getBoundingClientRect().right)}px`) \
              .join(', ');";
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let seen = self.browser.execute(script, Vec::new()).await.unwrap();
            if seen == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} does not fit the window's width: {seen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn text(&self) -> String {
        self.browser
            .execute("return document.body.innerText", Vec::new())
            .await
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn go(&self, hash: &str, heading: &str) {
        self.browser
            .execute("location.hash = arguments[0]", vec![json!(hash)])
            .await
            .unwrap();
        self.heading(heading).await;
    }

    /// Waits for the page's h1 to read `text`.
    async fn heading(&self, text: &str) {
        self.until(
            &format!("the heading {text:?}"),
            &format!(
                "const h = document.querySelector('main h1'); return h && h.textContent === {};",
                json!(text)
            ),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.browser.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_invokes_charts_rolls_back_and_redrives() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);
    let api = server.api();

    let driver = Driver::start(dir.path()).await;
    let browser = driver.session(&dir.path().join("profile")).await;
    let page = Page {
        browser: &browser,
        shots: screenshot_dir(),
    };

    // The page and its files come with their types and a strict policy.
    let response = client().get(server.url("/ui")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    browser.goto(&server.url("/ui")).await.unwrap();

    // Signed out: no navigation, no sign-out button.
    let input = page.find("input[name=key]").await;
    let hidden = browser
        .execute(
            "return [document.getElementById('nav'), document.getElementById('who')] \
               .every(e => e.offsetParent === null);",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(hidden, true, "the navigation shows before signing in");

    // The first Tab reaches the skip link.
    let tab = KeyActions::new("keyboard".into())
        .then(KeyAction::Down {
            value: Key::Tab.into(),
        })
        .then(KeyAction::Up {
            value: Key::Tab.into(),
        });
    browser.perform_actions(tab).await.unwrap();
    page.until(
        "Tab reaches the skip link first",
        "return document.activeElement.id === 'skip-link';",
    )
    .await;

    // A wrong key: the API's message, on the page.
    input.send_keys("upd_000000000000_wrong").await.unwrap();
    page.click("form button[type=submit]").await;
    let error = page.find("[role=alert]").await.text().await.unwrap();
    assert!(error.contains("the API key is not valid"), "{error}");
    page.screenshot("sign-in-error").await;

    // The admin key.
    input.clear().await.unwrap();
    input.send_keys(&server.admin_key).await.unwrap();
    page.click("form button[type=submit]").await;
    page.heading("Functions").await;
    let who = page.find("#who-tenant").await.text().await.unwrap();
    assert!(who.contains("local"), "{who}");
    let stored = browser
        .execute(
            "return sessionStorage.getItem('updraft.console.key')",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!(server.admin_key),
        "the key is kept in the tab"
    );
    page.find("main .panel").await;
    assert!(page.text().await.contains("No functions yet"));

    // Deployed through the API (raw Wasm), twice: versions 1 and 2.
    let wasm = std::fs::read(guest("echo")).unwrap();
    for route in ["/hello", "/hello-again"] {
        let response = api
            .put(server.url(&format!(
                "/v1/functions/hello?route={route}&key_value_stores=notes"
            )))
            .header("content-type", "application/wasm")
            .body(wasm.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
    let info = server.get_json("/v1/functions/hello").await;
    assert_eq!(info["aliases"]["latest"], 2, "{info}");

    // It appears on Refresh.
    page.click("main .row button").await;
    page.find("a[data-function=hello]").await;
    page.screenshot("functions").await;

    // Its page; invoked from the form.
    page.click("a[data-function=hello]").await;
    page.heading("hello").await;
    page.find("textarea[name=body]")
        .await
        .send_keys("hello from the console")
        .await
        .unwrap();
    page.click("form button.primary").await;
    page.until(
        "the response body shows",
        "const o = document.querySelector('pre.output'); \
         return o && o.textContent === 'hello from the console';",
    )
    .await;
    // Async from the same form: its status comes up by itself.
    page.find("select[name=mode]")
        .await
        .select_by_value("async")
        .await
        .unwrap();
    page.click("form button.primary").await;
    page.until(
        "the async call's status shows",
        "const b = [...document.querySelectorAll('.badge')].find(b => b.textContent === 'succeeded' || b.textContent === 'queued' || b.textContent === 'running'); \
         return !!b;",
    )
    .await;
    // A few more, through the API, for the chart.
    for i in 0..4 {
        let response = api
            .post(server.url("/v1/functions/hello/invoke"))
            .body(format!("call {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Latency and counts: the function's own metrics, as its tenant sees
    // them (`GET /v1/functions/hello/metrics`).
    page.go("#/functions", "Functions").await;
    page.go("#/functions/hello", "hello").await;
    let stats = page.find("dl.stats").await.text().await.unwrap();
    let shown = |label: &str| -> String {
        let mut lines = stats.lines().skip_while(|line| *line != label);
        lines.nth(1).unwrap_or_default().to_string()
    };
    let requests: u64 = shown("Requests").replace(',', "").parse().unwrap();
    assert!(requests >= 5, "the five calls above: {stats:?}");
    assert_eq!(shown("Errors"), "0", "{stats:?}");
    assert!(shown("p50").ends_with(" ms"), "{stats:?}");
    page.screenshot("function-metrics").await;

    // Usage: wait until the server has counted the calls, then the chart.
    wait_until(
        "the invocations are metered",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let usage = server.get_json("/v1/usage").await;
            let calls = usage["rows"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["key"] == "hello"))
                .map(|r| r["invocations"].as_u64().unwrap_or(0))
                .unwrap_or(0);
            if calls >= 5 {
                Ok(())
            } else {
                Err(usage.to_string())
            }
        },
    )
    .await;
    page.go("#/usage/hello", "Usage and cost of hello").await;
    let bars = page
        .until(
            "a bar with invocations in the chart",
            "const bars = [...document.querySelectorAll('#chart-invocations rect.bar')]; \
             const full = bars.filter(b => Number(b.dataset.value) > 0 && Number(b.getAttribute('height')) > 0); \
             return bars.length === 24 && full.length > 0 ? full.map(b => Number(b.dataset.value)) : null;",
        )
        .await;
    let calls: f64 = bars
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(calls >= 5.0, "the bars add up to the calls: {bars}");
    let cost = page
        .until(
            "a cost bar",
            "const bars = [...document.querySelectorAll('#chart-cost rect.bar')]; \
             const full = bars.filter(b => Number(b.dataset.value) > 0); \
             return full.length > 0 ? full.length : null;",
        )
        .await;
    assert!(cost.as_u64().unwrap() >= 1);
    let label = page
        .find("#chart-invocations svg")
        .await
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    assert!(label.contains("in all over 24 hours"), "{label}");
    page.find("#bill-total").await;
    page.find("#budget-none").await;
    // With a budget, a gauge that says how much is spent.
    let response = api
        .put(server.url("/v1/budget"))
        .body(r#"{"monthly_usd": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    page.go("#/functions", "Functions").await;
    page.go("#/usage/hello", "Usage and cost of hello").await;
    let gauge = page
        .find("svg.gauge")
        .await
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    assert!(gauge.contains("of the $5.00 budget for"), "{gauge}");
    page.find("#chart-invocations rect.bar").await;
    // Tall enough for the charts, the gauge and the bill (docs/console.png).
    browser.set_window_size(DESKTOP.0, 1600).await.unwrap();
    page.fits_width("the usage page").await;
    page.screenshot("usage").await;
    browser.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
    // Per day: 14 bars.
    page.find("select[name=period]")
        .await
        .select_by_value("day")
        .await
        .unwrap();
    page.until(
        "14 daily bars",
        "const bars = document.querySelectorAll('#chart-invocations rect.bar'); \
         return bars.length === 14 && [...bars].some(b => Number(b.dataset.value) >= 5);",
    )
    .await;

    // Rollback from the function's page: latest moves to 1.
    page.go("#/functions/hello", "hello").await;
    page.click("button[data-rollback='1']").await;
    wait_until(
        "the rollback reached the server",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            let info = server.get_json("/v1/functions/hello").await;
            match info["aliases"]["latest"] == 1 {
                true => Ok(()),
                false => Err(info.to_string()),
            }
        },
    )
    .await;
    page.until(
        "the page shows v1 as latest",
        "return !!document.querySelector(\"button[data-rollback='2']\");",
    )
    .await;
    page.until(
        "the recent invocations are listed",
        "return [...document.querySelectorAll('table caption')].some(c => c.textContent.startsWith('The last '));",
    )
    .await;
    page.screenshot("function").await;

    // The key-value browser: a value set through the API, shown as text.
    let response = api
        .put(server.url("/v1/kv/notes/greeting"))
        .body("{\"hello\":\"console\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    page.go("#/storage", "Key-value stores and blobs").await;
    page.click("a[href='#/storage/kv/notes']").await;
    page.heading("Store notes").await;
    page.click("main table button.link").await;
    page.until(
        "the value shows",
        "const o = document.querySelector('#detail pre'); return o && o.textContent.includes('\"console\"');",
    )
    .await;
    page.screenshot("storage").await;

    // A dead letter: a function that always fails, one attempt.
    server.deploy_guest(
        "doomed",
        "exit3",
        "blob_containers = [\"files\"]\n[retry]\nmax_attempts = 1",
    );
    let response = api
        .put(server.url("/v1/blobs/files/docs/readme.txt"))
        .body("a blob, shown as text")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    page.go("#/storage", "Key-value stores and blobs").await;
    page.click("a[href='#/storage/blobs/files']").await;
    page.heading("Container files").await;
    page.click("main table button.link").await;
    page.until(
        "the blob shows",
        "const o = document.querySelector('#detail pre'); return o && o.textContent === 'a blob, shown as text';",
    )
    .await;
    let (status, accepted) = {
        let response = api
            .post(server.url("/v1/functions/doomed/invoke?mode=async"))
            .body("x")
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    server.wait_for_dead_letter("doomed").await;
    let attempts = || async {
        server
            .usage_records("")
            .await
            .iter()
            .filter(|r| r["invocation_id"] == id.as_str())
            .count()
    };
    wait_until(
        "the attempt is metered",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            match attempts().await {
                1 => Ok(()),
                n => Err(format!("{n} attempts")),
            }
        },
    )
    .await;
    // A queue with two messages nobody consumes, and a topic.
    for (path, status) in [("/v1/queues/orders", 200), ("/v1/topics/news", 200)] {
        let response = api.put(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    for body in ["one", "two"] {
        let response = api
            .post(server.url("/v1/publish/orders"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    page.go("#/events", "Queues and topics").await;
    page.until(
        "the queue's depth shows",
        "const q = document.querySelector('[data-queue=orders]'); \
         return q && q.closest('tr').children[1].textContent === '2';",
    )
    .await;
    assert!(page.text().await.contains("news"));
    page.find("button[data-redrive=doomed]").await;
    // Held still, so the button is not redrawn under the click.
    page.click("#auto-refresh").await;
    page.find("#auto-refresh[aria-pressed=false]").await;
    page.screenshot("events").await;
    page.click("button[data-redrive=doomed]").await;
    wait_until(
        "the redriven call ran again",
        WAIT_MAX,
        Duration::from_millis(100),
        || async {
            match attempts().await {
                2 => Ok(()),
                n => Err(format!("{n} attempts")),
            }
        },
    )
    .await;

    // The function's own page lists its dead letter again, and its logs.
    server.wait_for_dead_letter("doomed").await;
    page.go("#/functions/doomed", "doomed").await;
    page.find("#redrive:not([disabled])").await;
    let failures = "return [...document.querySelectorAll('#log-lines li')] \
        .filter(l => l.textContent.includes('failing on purpose')).length;";
    let before = page
        .until(
            "the logs show the failure",
            &format!("const n = (() => {{ {failures} }})(); return n > 0 ? n : null;"),
        )
        .await;
    // Followed live: a new failure's line arrives without a reload.
    page.find("button[aria-pressed=true]").await;
    let response = api
        .post(server.url("/v1/functions/doomed/invoke?mode=async"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    page.until(
        "a new log line arrives live",
        &format!("const n = (() => {{ {failures} }})(); return n > {before} ? n : null;"),
    )
    .await;

    // A phone's width: nothing scrolls sideways, the nav still reachable.
    browser.set_window_size(PHONE.0, PHONE.1).await.unwrap();
    page.go("#/usage/hello", "Usage and cost of hello").await;
    let width = browser
        .execute("return window.innerWidth", Vec::new())
        .await
        .unwrap();
    assert!(
        width.as_u64().unwrap() <= 400,
        "a phone's width, not {width}"
    );
    page.find("#chart-invocations rect.bar").await;
    page.fits_width("the usage page").await;
    page.screenshot("phone-usage").await;
    page.go("#/functions", "Functions").await;
    page.find("a[data-function=doomed]").await;
    page.fits_width("the functions page").await;
    page.screenshot("phone-functions").await;

    // Sign out: the key is gone from the tab.
    page.click("#sign-out").await;
    page.find("input[name=key]").await;
    let stored = browser
        .execute(
            "return sessionStorage.getItem('updraft.console.key')",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);

    // Another tenant's key sees only that tenant: nothing of local's.
    let created: Value = api
        .post(server.url("/v1/keys"))
        .body(r#"{"tenant": "acme", "label": "console"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acme_key = created["key"].as_str().unwrap();
    page.find("input[name=key]")
        .await
        .send_keys(acme_key)
        .await
        .unwrap();
    page.click("form button[type=submit]").await;
    page.heading("Functions").await;
    let who = page.find("#who-tenant").await.text().await.unwrap();
    assert!(who.contains("acme"), "{who}");
    page.find("main .panel").await;
    assert!(page.text().await.contains("No functions yet"));
    // Revoked while signed in: the next call signs the console out, saying why.
    let id = created["id"].as_str().unwrap();
    let response = api
        .delete(server.url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    page.click("main .row button").await;
    page.find("input[name=key]").await;
    page.until(
        "the sign-in page says the key was refused",
        "return document.querySelector('main').textContent.includes('The server refused the key');",
    )
    .await;

    let shots = page.shots.clone();
    browser.close().await.unwrap();
    drop(driver);
    println!(
        "console test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
