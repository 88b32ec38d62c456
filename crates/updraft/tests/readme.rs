//! The README's quickstart, run as written: every `curl` and `updraft`
//! command of its shell blocks, in order, in one shell, against a server
//! with every example deployed as `cargo xtask up` deploys them. A comment
//! `→ TEXT` is the output the line must print. Only the server's address
//! differs: `http://127.0.0.1:8080` becomes the port picked at run time.
//!
//! The two `cargo xtask` commands are not run here: `test` is what runs
//! this, and `up` serves on the fixed port 8080 until stopped.
//!
//! Also here: `updraft up` with its output in files writes no colour codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The address the README's commands use.
const README_URL: &str = "http://127.0.0.1:8080";
/// Printed between lines, to split the output per line.
const MARK: &str = "@@updraft-readme-line@@";

/// The quickstart's shell blocks, less the `cargo xtask` ones.
fn quickstart_lines(readme: &str) -> Vec<String> {
    let start = readme.find("## Quickstart").expect("a Quickstart section");
    let rest = &readme[start + 1..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        match (in_block, line.trim()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) if !l.is_empty() && !l.starts_with("cargo xtask") => {
                lines.push(l.to_string())
            }
            _ => {}
        }
    }
    lines
}

/// What `→ TEXT` at the end of a line's comment promises it prints.
fn expected(line: &str) -> Option<&str> {
    let comment = &line[line.find(" # ")?..];
    Some(comment[comment.find('→')? + '→'.len_utf8()..].trim())
}

fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("updraft.toml"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

#[test]
fn every_quickstart_command_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for manifest in examples() {
        server.cli_ok(&["deploy", manifest.to_str().unwrap()]);
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = quickstart_lines(&readme);
    assert!(
        lines.len() > 20,
        "the quickstart lost its commands: {lines:?}"
    );
    let mut script = String::from("set -euo pipefail\n");
    for line in &lines {
        script.push_str(&format!(
            "echo '{MARK}'\n{}\n",
            line.replace(README_URL, &server.url)
        ));
    }
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root())
        .env("PATH", path)
        .env("UPDRAFT_SERVER", &server.url)
        .env("UPDRAFT_DATA_DIR", &server.data_dir)
        .env_remove("UPDRAFT_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first piece is what came before the first mark: nothing.
    let outputs: Vec<&str> = stdout.split(&format!("{MARK}\n")).skip(1).collect();
    assert!(
        out.status.success(),
        "the quickstart stopped at line {}: {:?}\nits output: {}\nstderr: {stderr}",
        outputs.len(),
        lines.get(outputs.len().saturating_sub(1)),
        outputs.last().unwrap_or(&""),
    );
    assert_eq!(outputs.len(), lines.len(), "{stdout}");
    let mut checked = 0;
    for (line, output) in lines.iter().zip(&outputs) {
        if let Some(want) = expected(line) {
            assert_eq!(output.trim(), want, "{line}");
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} lines promise an output");
    // `updraft invocation "$id"` found the call queued a line before, in
    // whatever state it is by then (queued, running or done).
    let (_, shown) = lines
        .iter()
        .zip(&outputs)
        .find(|(line, _)| line.starts_with("updraft invocation "))
        .expect("the quickstart shows an invocation");
    assert!(
        shown.contains("function:  counter-rust") && shown.contains("status:"),
        "{shown}"
    );
}

#[test]
fn quickstart_lines_and_promises_are_read_from_the_readme() {
    let readme = "# x\n```sh\nnot this\n```\n## Quickstart\n```sh\ncargo xtask up  # no\n\
                  curl http://127.0.0.1:8080/hello   # a → Hi!\nupdraft ls\n```\n\
                  text\n## Next\n```sh\nnot this either\n```\n";
    let lines = quickstart_lines(readme);
    assert_eq!(
        lines,
        ["curl http://127.0.0.1:8080/hello   # a → Hi!", "updraft ls"]
    );
    assert_eq!(expected(&lines[0]), Some("Hi!"));
    assert_eq!(expected(&lines[1]), None);
}

#[test]
fn up_writes_no_colour_codes_into_files() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("updraft.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_logging(&data, &[], "info", Stdio::from(log));
    server.deploy_guest("echo", "echo", "route = \"/echo\"");
    assert_eq!(server.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("INFO"), "the log has no lines: {text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a file: {text:?}");

    // Asked for, colour is there even in a file.
    let log_path = dir.path().join("coloured.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = Server::start_logging(&data, &["--color", "always"], "info", Stdio::from(log));
    assert_eq!(server.stop().code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains('\u{1b}'), "--color always: {text:?}");
}
