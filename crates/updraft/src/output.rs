//! Human rendering of the server's replies: tables, sizes, durations, log lines, and
//! the deploy spinner.
//!
//! Renderers write to any `io::Write` so tests check the text; `main.rs` passes a
//! locked stdout. `--json` skips this module except for [`write_json`].

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use comfy_table::{Cell, ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{FunctionDetail, FunctionList, KeyInfo, LogLine, VersionInfo};

/// Shown in place of an absent value, so columns stay aligned and greppable.
const NONE: &str = "-";

/// Length of the digest prefix shown in tables (the convention of `docker images`).
const DIGEST_SHORT_LEN: usize = 12;

/// Length of the invocation-id suffix shown in log lines.
const INVOCATION_ID_SHORT_LEN: usize = 8;

/// Writes pretty-printed JSON followed by a newline.
pub fn write_json(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// `1536` → `1.5 KiB`. Binary units, because Wasm sizes and memory limits are.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `250ms`, `1.2s`, `2m05s`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// `sha256:3f2a…` → `3f2a5b6c7d8e` (the algorithm is always sha256, so it is noise).
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(DIGEST_SHORT_LEN).collect()
}

/// The last characters of an invocation id. Ids are UUIDv7, whose leading characters
/// are a timestamp shared by invocations close in time; the trailing ones are random
/// and so tell invocations apart.
pub fn short_invocation_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    let start = chars.len().saturating_sub(INVOCATION_ID_SHORT_LEN);
    chars[start..].iter().collect()
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        // Lines never wrap: tables are read in wide terminals and grepped in pipes.
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

fn or_none(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or(NONE)
}

/// The table of `updraft ls`.
pub fn write_function_list(out: &mut impl Write, list: &FunctionList) -> io::Result<()> {
    if list.functions.is_empty() {
        return writeln!(
            out,
            "no functions deployed yet: deploy one with `updraft deploy`"
        );
    }
    let mut table = table(&[
        "NAME", "KIND", "ROUTE", "VERSION", "VERSIONS", "SIZE", "UPDATED",
    ]);
    for f in &list.functions {
        table.add_row(vec![
            f.name.clone(),
            f.kind.clone(),
            or_none(f.route.as_deref()).to_owned(),
            f.version.to_string(),
            f.versions.to_string(),
            format_bytes(f.wasm_bytes),
            f.updated_at.clone(),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())
}

/// A plain table of strings.
pub fn write_table(
    out: &mut impl Write,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> io::Result<()> {
    let mut t = table(header);
    for row in rows {
        t.add_row(row);
    }
    writeln!(out, "{}", t.trim_fmt())
}

/// The table of `updraft keys ls`.
pub fn write_keys(out: &mut impl Write, keys: &[KeyInfo]) -> io::Result<()> {
    let mut table = table(&["ID", "TENANT", "ADMIN", "LABEL", "CREATED"]);
    for key in keys {
        table.add_row(vec![
            key.id.clone(),
            key.tenant.clone(),
            if key.admin { "yes" } else { "no" }.to_string(),
            or_none(Some(&key.label)).to_owned(),
            key.created_at.clone(),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())
}

/// The summary of `updraft info`. `route_url` turns a route into the URL to call.
pub fn write_function_detail(
    out: &mut impl Write,
    f: &FunctionDetail,
    route_url: impl Fn(&str) -> String,
) -> io::Result<()> {
    writeln!(out, "name:      {}", f.name)?;
    writeln!(out, "kind:      {}", or_none(Some(&f.kind)))?;
    match f.route.as_deref().filter(|r| !r.is_empty()) {
        Some(route) => writeln!(out, "route:     {route}  ({})", route_url(route))?,
        None => writeln!(out, "route:     {NONE}")?,
    }
    writeln!(out, "latest:    version {}", f.latest())?;
    writeln!(out, "aliases:   {}", aliases(f))?;
    writeln!(out, "limits:    {}", limits(f))?;
    let env = if f.env_keys.is_empty() {
        NONE.to_owned()
    } else {
        f.env_keys.join(", ")
    };
    writeln!(out, "env:       {env}")?;
    writeln!(out, "state:     {}", state(f))?;
    writeln!(out, "artifact:  {}", artifact(f))?;
    if !f.versions.is_empty() {
        writeln!(out)?;
        write_versions(out, f)?;
    }
    Ok(())
}

/// The key-value stores and blob containers the function may open.
fn state(f: &FunctionDetail) -> String {
    let mut parts = Vec::new();
    if !f.key_value_stores.is_empty() {
        parts.push(format!("kv {}", f.key_value_stores.join(", ")));
    }
    if !f.blob_containers.is_empty() {
        parts.push(format!("blobs {}", f.blob_containers.join(", ")));
    }
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join("; ")
    }
}

fn aliases(f: &FunctionDetail) -> String {
    if f.aliases.is_empty() {
        return NONE.to_owned();
    }
    let pairs: Vec<String> = f
        .aliases
        .iter()
        .map(|(alias, version)| format!("{alias} -> {version}"))
        .collect();
    pairs.join(", ")
}

fn limits(f: &FunctionDetail) -> String {
    let Some(limits) = &f.limits else {
        return NONE.to_owned();
    };
    let mut parts = Vec::new();
    if let Some(mb) = limits.memory_mb {
        parts.push(format!("memory {mb} MiB"));
    }
    if let Some(ms) = limits.timeout_ms {
        parts.push(format!(
            "timeout {}",
            format_duration(Duration::from_millis(ms))
        ));
    }
    if let Some(bytes) = limits.request_body_bytes_max {
        parts.push(format!("request body ≤ {}", format_bytes(bytes)));
    }
    if let Some(bytes) = limits.response_body_bytes_max {
        parts.push(format!("response body ≤ {}", format_bytes(bytes)));
    }
    if let Some(uses) = limits.instance_reuse_max.filter(|&uses| uses > 1) {
        parts.push(format!("instance reused for up to {uses} requests"));
    }
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join(", ")
    }
}

fn artifact(f: &FunctionDetail) -> String {
    let Some(artifact) = &f.artifact else {
        return NONE.to_owned();
    };
    let mut text = match (artifact.loaded_from.as_str(), artifact.compile_ms) {
        ("cache", _) => "loaded from the compile cache".to_owned(),
        (_, Some(ms)) => format!("compiled in {}", format_duration(Duration::from_millis(ms))),
        (from, None) => format!("loaded from {}", or_none(Some(from))),
    };
    if let Some(bytes) = artifact.compiled_bytes {
        text.push_str(&format!(", {} of machine code", format_bytes(bytes)));
    }
    if artifact.tier.as_deref() == Some("baseline") {
        text.push_str(" by Winch; optimized code is being compiled");
    }
    text
}

/// Newest first; each version is tagged with the aliases pointing at it, so a
/// rollback shows as `latest` sitting below the newest version.
fn write_versions(out: &mut impl Write, f: &FunctionDetail) -> io::Result<()> {
    let mut versions: Vec<&VersionInfo> = f.versions.iter().collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let mut table = table(&[
        "VERSION",
        "DIGEST",
        "KIND",
        "WASM SIZE",
        "COMPILED SIZE",
        "CREATED",
    ]);
    for v in versions {
        table.add_row(vec![
            version_label(f, v.version),
            short_digest(&v.digest),
            or_none(Some(&v.kind)).to_owned(),
            format_bytes(v.wasm_bytes),
            compiled_size(f, v),
            or_none(Some(&v.created_at)).to_owned(),
        ]);
    }
    writeln!(out, "{}", table.trim_fmt())
}

fn version_label(f: &FunctionDetail, version: u64) -> String {
    let names: Vec<&str> = f
        .aliases
        .iter()
        .filter(|(_, v)| **v == version)
        .map(|(alias, _)| alias.as_str())
        .collect();
    if names.is_empty() {
        version.to_string()
    } else {
        format!("{version} ({})", names.join(", "))
    }
}

/// The server may report compiled sizes per version; if not, the artifact's size is
/// known for the latest version only.
fn compiled_size(f: &FunctionDetail, v: &VersionInfo) -> String {
    let from_artifact = || {
        f.artifact
            .as_ref()
            .filter(|_| v.version == f.latest())
            .and_then(|a| a.compiled_bytes)
    };
    v.compiled_bytes
        .or_else(from_artifact)
        .map_or_else(|| NONE.to_owned(), format_bytes)
}

/// The result of `updraft deploy`: what was deployed, and how to call it.
pub fn write_deployed(
    out: &mut impl Write,
    f: &FunctionDetail,
    elapsed: Duration,
    route_url: impl Fn(&str) -> String,
) -> io::Result<()> {
    let route = f.route.as_deref().filter(|r| !r.is_empty());
    let what = match route {
        Some(route) => format!("{}, route {route}", f.kind),
        None => f.kind.clone(),
    };
    writeln!(
        out,
        "deployed {} version {} ({what}) in {}",
        f.name,
        f.latest(),
        format_duration(elapsed)
    )?;
    if f.artifact
        .as_ref()
        .is_some_and(|a| a.tier.as_deref() == Some("baseline"))
    {
        writeln!(
            out,
            "compiled by Winch; optimized code is being compiled and replaces it in the background"
        )?;
    }
    match route {
        Some(route) => writeln!(out, "{}", route_url(route)),
        None => writeln!(out, "invoke it with: updraft invoke {}", f.name),
    }
}

/// One log line as `TS  [id]  stream: message`; a line that is not the expected JSON
/// is shown as received rather than dropped.
pub fn format_log_line(raw: &str) -> String {
    let Ok(line) = serde_json::from_str::<LogLine>(raw) else {
        return raw.to_owned();
    };
    // Platform lines belong to no invocation; the server marks them `-` (or omits it).
    let id = if line.invocation_id.is_empty() || line.invocation_id == NONE {
        NONE.repeat(INVOCATION_ID_SHORT_LEN)
    } else {
        format!(
            "{:>width$}",
            short_invocation_id(&line.invocation_id),
            width = INVOCATION_ID_SHORT_LEN
        )
    };
    let message = line.message.trim_end_matches(['\n', '\r']);
    format!("{}  [{id}]  {}: {message}", line.ts, line.stream)
}

/// A spinner on stderr while the server compiles, or a hidden one when its drawing
/// would garble output: with `--json`, or when stderr is not a terminal.
pub fn spinner(enabled: bool, message: String) -> ProgressBar {
    if !enabled || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Artifact, FunctionSummary, Limits};

    fn render(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn url(route: &str) -> String {
        format!("http://h{route}")
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(71 * 1024 + 100), "71.1 KiB");
        assert_eq!(format_bytes(13 * 1024 * 1024), "13.0 MiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn durations_are_human_readable() {
        assert_eq!(format_duration(Duration::from_millis(0)), "0ms");
        assert_eq!(format_duration(Duration::from_millis(999)), "999ms");
        assert_eq!(format_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn digests_and_ids_are_shortened() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
        assert_eq!(
            short_invocation_id("0190b6e2-7c1a-7d3e-8f00-1234deadbeef"),
            "deadbeef"
        );
        assert_eq!(short_invocation_id("abc"), "abc");
    }

    #[test]
    fn log_lines() {
        let raw = r#"{"ts":"2026-11-26T23:01:02.123Z","invocation_id":"0190b6e2-7c1a-7d3e-8f00-1234deadbeef","stream":"stderr","message":"boom\n"}"#;
        assert_eq!(
            format_log_line(raw),
            "2026-11-26T23:01:02.123Z  [deadbeef]  stderr: boom"
        );
        let platform = r#"{"ts":"t","stream":"platform","message":"compiled"}"#;
        assert_eq!(
            format_log_line(platform),
            "t  [--------]  platform: compiled"
        );
        let platform = r#"{"ts":"t","invocation_id":"-","stream":"platform","message":"m"}"#;
        assert_eq!(format_log_line(platform), "t  [--------]  platform: m");
        assert_eq!(format_log_line("not json"), "not json");
    }

    #[test]
    fn function_list_table() {
        let list = FunctionList {
            functions: vec![
                FunctionSummary {
                    name: "hello-rust".into(),
                    kind: "http".into(),
                    route: Some("/hello".into()),
                    version: 3,
                    versions: 3,
                    wasm_bytes: 72_704,
                    updated_at: "2026-11-26T23:01:02Z".into(),
                },
                FunctionSummary {
                    name: "wc".into(),
                    kind: "command".into(),
                    ..FunctionSummary::default()
                },
            ],
        };
        let text = render(|out| write_function_list(out, &list));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "hello-rust",
                "http",
                "/hello",
                "3",
                "3",
                "71.0",
                "KiB",
                "2026-11-26T23:01:02Z"
            ]
        );
        assert!(lines[2].contains("wc  "), "{text}");
        assert!(lines[2].contains(" - "), "absent route shows as -: {text}");
        assert!(
            lines.iter().all(|l| !l.ends_with(' ')),
            "no trailing spaces: {text:?}"
        );
    }

    #[test]
    fn empty_list_says_what_to_do() {
        let text = render(|out| write_function_list(out, &FunctionList::default()));
        assert!(text.contains("updraft deploy"));
    }

    fn detail() -> FunctionDetail {
        FunctionDetail {
            name: "hello".into(),
            kind: "http".into(),
            route: Some("/hello".into()),
            version: 3,
            aliases: [("latest".to_owned(), 2)].into(),
            limits: Some(Limits {
                memory_mb: Some(128),
                timeout_ms: Some(5000),
                request_body_bytes_max: Some(1024 * 1024),
                response_body_bytes_max: None,
                instance_reuse_max: Some(1),
            }),
            env_keys: vec!["A".into(), "B".into()],
            key_value_stores: vec!["default".into()],
            blob_containers: Vec::new(),
            artifact: Some(Artifact {
                loaded_from: "compile".into(),
                compile_ms: Some(1200),
                compiled_bytes: Some(2 * 1024 * 1024),
                tier: Some("optimized".into()),
            }),
            versions: (1..=3)
                .map(|version| VersionInfo {
                    version,
                    digest: format!("sha256:{version}{}", "0".repeat(63)),
                    kind: "http".into(),
                    wasm_bytes: 2048,
                    created_at: format!("2026-11-2{version}T00:00:00Z"),
                    ..VersionInfo::default()
                })
                .collect(),
        }
    }

    #[test]
    fn function_detail_summary_and_versions() {
        let text = render(|out| write_function_detail(out, &detail(), url));
        assert!(
            text.contains("route:     /hello  (http://h/hello)"),
            "{text}"
        );
        assert!(text.contains("latest:    version 2"), "alias wins: {text}");
        assert!(
            text.contains("memory 128 MiB, timeout 5.0s, request body ≤ 1.0 MiB"),
            "{text}"
        );
        assert!(text.contains("env:       A, B"), "{text}");
        assert!(text.contains("state:     kv default\n"), "{text}");
        assert!(
            text.contains("compiled in 1.2s, 2.0 MiB of machine code"),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("VERSION"))
            .collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert!(rows[1].starts_with("3  "), "newest first: {text}");
        assert!(rows[2].starts_with("2 (latest)"), "{text}");
        assert!(rows[2].contains("200000000000"), "short digest: {text}");
        assert!(
            rows[2].contains("2.0 MiB"),
            "compiled size of latest: {text}"
        );
        assert!(!rows[1].contains("MiB"), "unknown compiled size: {text}");
    }

    #[test]
    fn function_detail_with_almost_nothing() {
        let f = FunctionDetail {
            name: "x".into(),
            ..FunctionDetail::default()
        };
        let text = render(|out| write_function_detail(out, &f, url));
        assert!(text.contains("route:     -"), "{text}");
        assert!(text.contains("limits:    -"), "{text}");
        assert!(!text.contains("VERSION"), "{text}");
    }

    #[test]
    fn deployed_message() {
        let mut f = detail();
        f.aliases.clear();
        let text = render(|out| write_deployed(out, &f, Duration::from_millis(1200), url));
        assert_eq!(
            text,
            "deployed hello version 3 (http, route /hello) in 1.2s\nhttp://h/hello\n"
        );
        f.route = None;
        f.kind = "command".into();
        let text = render(|out| write_deployed(out, &f, Duration::from_millis(80), url));
        assert_eq!(
            text,
            "deployed hello version 3 (command) in 80ms\ninvoke it with: updraft invoke hello\n"
        );
    }

    #[test]
    fn json_is_pretty() {
        let text = render(|out| write_json(out, &serde_json::json!({"a": [1]})));
        assert_eq!(text, "{\n  \"a\": [\n    1\n  ]\n}\n");
    }
}
