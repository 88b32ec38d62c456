//! `cargo xtask guests`: builds every Wasm guest into `target/guests/`.
//!
//! Guests are found by layout, so adding one is adding files:
//!
//! | where                              | guest                                        |
//! | ---------------------------------- | -------------------------------------------- |
//! | `tests/guests/c/<name>.c`          | C command, one file each                      |
//! | `<dir>/Cargo.toml`                 | Rust crate (its own workspace) → component    |
//! | `<dir>/package.json` + `app.js`    | JavaScript (componentize-js) → component      |
//! | `<dir>/app.py` + `wit/`            | Python (componentize-py) → component          |
//! | `<dir>/*.c`                        | C command from all the folder's `.c` files    |
//!
//! where `<dir>` is a folder of `examples/` or `tests/guests/`, and the guest
//! is named after it. Outputs:
//!
//! - C guests stay **core wasip1 modules**: the platform wraps core modules
//!   into components itself at deploy, and that path must be exercised. We
//!   still wrap each one here, in memory, as a check.
//! - Rust guests are built by Debian's cargo with `-Zbuild-std` (the recipe of
//!   `/work/shared/TOOLCHAINS.md`), all in one target dir so std is built once,
//!   then made components with wit-component and the `proxy` adapter (a
//!   library crate: a `wasi:http` handler) or the `command` adapter (a binary).
//! - JS and Python guests are componentized by their language's tool, which
//!   is installed on first use into the example's `node_modules/` or the venv
//!   `target/py-venv/`.
//!
//! A guest is rebuilt only when its stamp changes: a SHA-256 of its recipe
//! (tool versions and flags) and of every input file, stored next to the
//! output as `<name>.stamp`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::{ComponentEncoder, DecodedWasm};

/// Bump when a recipe changes in a way the strings below do not show, to
/// force every guest to rebuild once.
const STAMP_VERSION: &str = "updraft-guest-stamp-v1";

/// C: flags given to `clang-16` (TOOLCHAINS.md), warnings as errors since the
/// sources are ours.
const CLANG: &str = "clang-16";
const CLANG_FLAGS: &[&str] = &[
    "--target=wasm32-wasi",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--strip-all",
];

/// Rust: Debian's `rustc-web` toolchain; rustup's cargo in `~/.cargo/bin`
/// must not shadow it, hence the absolute path and the narrow `PATH`.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_PATH: &str = "/usr/bin:/bin";
const RUST_STD_SOURCES: &str = "/usr/lib/rustlib/src/rust/library/std";
const RUST_WASI_LIBC: &str = "/usr/lib/rustlib/wasm32-wasip1/lib/self-contained/libc.a";
const RUST_LLD: &str = "/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld";
const RUST_TARGET: &str = "wasm32-wasip1";
const RUST_BUILD_ARGS: &[&str] = &[
    "build",
    "--release",
    "--target",
    RUST_TARGET,
    "-Zbuild-std=std,panic_abort",
];
/// Oldest Debian cargo that can build the guests (rustc-web in bookworm).
const RUST_MIN_MINOR: u32 = 85;
/// The component tooling linked into this crate; part of the Rust recipe.
const COMPONENT_TOOLING: &str =
    "wit-component 0.254.2, wasi-preview1-component-adapter-provider 48.0.8";

/// JavaScript: componentize-js comes from the example's own package-lock.
const JS_ENTRY: &str = "app.js";
const COMPONENTIZE_JS_CLI: &str = "node_modules/@bytecodealliance/componentize-js/src/cli.js";

/// Python: componentize-py, pinned, in a venv under the target dir.
const PY_ENTRY: &str = "app.py";
const PY_MODULE: &str = "app";
const COMPONENTIZE_PY: &str = "componentize-py";
const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Folders and files that are never build inputs.
const IGNORED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    "__pycache__",
    ".venv",
    "venv",
    ".git",
];
const IGNORED_FILES: &[&str] = &["updraft.toml", ".gitignore"];
const IGNORED_EXTENSIONS: &[&str] = &["md"];

const SETUP_HINT: &str = "run `scripts/setup.sh` (as root) to install the guest toolchains";

#[derive(Debug, Default)]
pub struct Options {
    /// Rebuild even when the stamp says up to date.
    pub force: bool,
    /// Only list the guests and their state.
    pub list: bool,
    /// Build only these guests (all when empty).
    pub only: Vec<String>,
    /// Only the guests under `examples/` (what `cargo xtask up` deploys).
    pub examples_only: bool,
}

/// Which WASI adapter turns a Rust core module into a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    /// A library crate exporting `wasi:http/incoming-handler`.
    Proxy,
    /// A binary crate (`_start`), exporting `wasi:cli/run`.
    Command,
}

#[derive(Debug)]
enum Lang {
    C { sources: Vec<PathBuf> },
    Rust { adapter: Adapter },
    Js,
    Python,
}

impl Lang {
    /// Build order: fast and self-contained first, so a missing Node or
    /// Python does not hold back the guests that can be built.
    fn rank(&self) -> u8 {
        match self {
            Lang::C { .. } => 0,
            Lang::Rust { .. } => 1,
            Lang::Python => 2,
            Lang::Js => 3,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Lang::C { .. } => "C",
            Lang::Rust { .. } => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }

    /// Everything about how the guest is built that is not an input file.
    fn recipe(&self) -> String {
        match self {
            Lang::C { .. } => format!("c: {CLANG} {}", CLANG_FLAGS.join(" ")),
            Lang::Rust { adapter } => format!(
                "rust: {DEBIAN_CARGO} {} ({DEBIAN_PATH}); {COMPONENT_TOOLING}; adapter {adapter:?}",
                RUST_BUILD_ARGS.join(" ")
            ),
            Lang::Js => format!("js: componentize-js (package-lock.json) {JS_ENTRY}"),
            Lang::Python => {
                format!("python: {COMPONENTIZE_PY}=={COMPONENTIZE_PY_VERSION} {PY_MODULE}")
            }
        }
    }
}

#[derive(Debug)]
struct Guest {
    name: String,
    lang: Lang,
    /// The folder the guest is built in (a C file's folder for single-file
    /// C guests).
    dir: PathBuf,
    /// Whether every file under `dir` is an input (false: only `sources`).
    whole_dir: bool,
}

impl Guest {
    fn inputs(&self) -> Result<Vec<PathBuf>> {
        let mut files = match (&self.lang, self.whole_dir) {
            (Lang::C { sources }, false) => sources.clone(),
            _ => {
                let mut files = Vec::new();
                walk(&self.dir, &mut files)?;
                files
            }
        };
        // Rust guests may generate bindings from the WIT the platform
        // implements (wit-bindgen reads it at build time).
        if matches!(self.lang, Lang::Rust { .. }) {
            let platform_wit = PLATFORM_WIT
                .iter()
                .map(|p| self.dir.join(p))
                .find(|p| p.is_dir());
            if let Some(platform_wit) = platform_wit {
                walk(&platform_wit, &mut files)?;
            }
        }
        files.sort();
        Ok(files)
    }

    /// SHA-256 over the recipe and every input's path (relative to the
    /// guest's folder) and contents.
    fn stamp(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        hasher.update(STAMP_VERSION.as_bytes());
        hasher.update([0]);
        hasher.update(self.lang.recipe().as_bytes());
        hasher.update([0]);
        for file in self.inputs()? {
            let relative = file.strip_prefix(&self.dir).unwrap_or(&file);
            let contents =
                fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            hasher.update(relative.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update((contents.len() as u64).to_le_bytes());
            hasher.update(&contents);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// The platform's WIT, seen from a guest's folder (`examples/X`, `tests/guests/X`).
const PLATFORM_WIT: [&str; 2] = [
    "../../crates/updraft-sandbox/wit",
    "../../../crates/updraft-sandbox/wit",
];

/// Where things go; every path is absolute.
struct Layout {
    root: PathBuf,
    guests_dir: PathBuf,
    /// Shared by all Rust guests so std (`-Zbuild-std`) is compiled once.
    rust_target_dir: PathBuf,
    /// `XDG_CACHE_HOME` for componentize-js, componentize-py and Wasmtime.
    cache_dir: PathBuf,
    venv_dir: PathBuf,
}

impl Layout {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent folder")?
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    std::env::current_dir()?.join(dir)
                }
            }
            _ => root.join("target"),
        };
        Ok(Self {
            guests_dir: target.join("guests"),
            rust_target_dir: target.join("wasm-guests"),
            cache_dir: target.join("cache"),
            venv_dir: target.join("py-venv"),
            root,
        })
    }

    fn display<'a>(&self, path: &'a Path) -> std::path::Display<'a> {
        path.strip_prefix(&self.root).unwrap_or(path).display()
    }
}

pub fn run(options: &Options) -> Result<()> {
    let layout = Layout::new()?;
    let mut guests = discover(&layout.root)?;
    if options.examples_only {
        let examples = layout.root.join("examples");
        guests.retain(|g| g.dir.starts_with(&examples));
    }
    if !options.only.is_empty() {
        for name in &options.only {
            if !guests.iter().any(|g| &g.name == name) {
                let known: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
                bail!(
                    "no guest named `{name}`; known guests: {}",
                    known.join(", ")
                );
            }
        }
        guests.retain(|g| options.only.contains(&g.name));
    }
    let width = guests.iter().map(|g| g.name.len()).max().unwrap_or(0);

    if options.list {
        for guest in &guests {
            let output = layout.guests_dir.join(format!("{}.wasm", guest.name));
            let state = if is_up_to_date(guest, &layout)?.is_some() {
                "up to date"
            } else {
                "needs build"
            };
            let source = match &guest.lang {
                Lang::C { sources } if !guest.whole_dir && sources.len() == 1 => &sources[0],
                _ => &guest.dir,
            };
            println!(
                "{:width$}  {:10}  {:12}  {} -> {}",
                guest.name,
                guest.lang.label(),
                state,
                layout.display(source),
                layout.display(&output),
            );
        }
        return Ok(());
    }

    fs::create_dir_all(&layout.guests_dir)
        .with_context(|| format!("cannot create {}", layout.guests_dir.display()))?;
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut built, mut fresh) = (0, 0);
    for guest in &guests {
        print!("{:width$}  ", guest.name);
        let _ = io::stdout().flush();
        if !options.force && is_up_to_date(guest, &layout)?.is_some() {
            println!("up to date");
            fresh += 1;
            continue;
        }
        let guest_started = Instant::now();
        match build(guest, &layout) {
            Ok(output) => {
                let size = fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
                println!(
                    "built in {:.1} s -> {} ({})",
                    guest_started.elapsed().as_secs_f64(),
                    layout.display(&output),
                    human_size(size)
                );
                built += 1;
            }
            Err(err) => {
                println!(
                    "FAILED after {:.1} s",
                    guest_started.elapsed().as_secs_f64()
                );
                failures.push((guest.name.clone(), err));
            }
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    if failures.is_empty() {
        println!(
            "{} guests: {built} built, {fresh} up to date ({elapsed:.1} s)",
            guests.len()
        );
        return Ok(());
    }
    let mut report = String::new();
    for (name, err) in &failures {
        let _ = write!(report, "\n\n--- {name} ---\n{err:#}");
    }
    Err(anyhow!(
        "{} of {} guests failed to build:{report}",
        failures.len(),
        guests.len()
    ))
}

/// The stamp if `guest`'s output exists and its stamp matches its inputs.
fn is_up_to_date(guest: &Guest, layout: &Layout) -> Result<Option<String>> {
    let output = layout.guests_dir.join(format!("{}.wasm", guest.name));
    let stamp_file = layout.guests_dir.join(format!("{}.stamp", guest.name));
    if !output.is_file() {
        return Ok(None);
    }
    let Ok(stored) = fs::read_to_string(&stamp_file) else {
        return Ok(None);
    };
    let stamp = guest.stamp()?;
    Ok((stored.trim() == stamp).then_some(stamp))
}

/// Finds every guest under `examples/` and `tests/guests/`.
fn discover(root: &Path) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();

    let c_tests = root.join("tests/guests/c");
    for file in sorted_entries(&c_tests)? {
        if file.is_file() && file.extension() == Some(OsStr::new("c")) {
            let name = file_stem(&file)?;
            guests.push(Guest {
                name,
                lang: Lang::C {
                    sources: vec![file.clone()],
                },
                dir: c_tests.clone(),
                whole_dir: false,
            });
        }
    }

    for parent in [root.join("examples"), root.join("tests/guests")] {
        for dir in sorted_entries(&parent)? {
            if !dir.is_dir() || dir == c_tests {
                continue;
            }
            if let Some(lang) = classify(&dir)? {
                guests.push(Guest {
                    name: file_stem(&dir)?,
                    lang,
                    dir,
                    whole_dir: true,
                });
            }
        }
    }

    guests.sort_by(|a, b| (a.lang.rank(), &a.name).cmp(&(b.lang.rank(), &b.name)));
    let mut names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        bail!("two guests are named `{}`: outputs would collide", pair[0]);
    }
    Ok(guests)
}

/// What kind of guest a folder holds, if any.
fn classify(dir: &Path) -> Result<Option<Lang>> {
    if dir.join("Cargo.toml").is_file() {
        let adapter = if dir.join("src/main.rs").is_file() {
            Adapter::Command
        } else {
            Adapter::Proxy
        };
        return Ok(Some(Lang::Rust { adapter }));
    }
    if dir.join("package.json").is_file() {
        return Ok(Some(Lang::Js));
    }
    if dir.join(PY_ENTRY).is_file() {
        return Ok(Some(Lang::Python));
    }
    let sources: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|f| f.is_file() && f.extension() == Some(OsStr::new("c")))
        .collect();
    if sources.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Lang::C { sources }))
    }
}

/// Builds one guest and stamps it; returns the output path.
fn build(guest: &Guest, layout: &Layout) -> Result<PathBuf> {
    let output = layout.guests_dir.join(format!("{}.wasm", guest.name));
    let stamp_file = layout.guests_dir.join(format!("{}.stamp", guest.name));
    // A failed build must not leave a stamp that calls an old output fresh.
    let _ = fs::remove_file(&stamp_file);
    let partial = layout
        .guests_dir
        .join(format!("{}.wasm.partial", guest.name));

    let wasm = match &guest.lang {
        Lang::C { sources } => build_c(sources, &partial)?,
        Lang::Rust { adapter } => build_rust(guest, *adapter, layout)?,
        Lang::Js => build_js(guest, layout, &partial)?,
        Lang::Python => build_python(guest, layout, &partial)?,
    };
    check_output(guest, &wasm).with_context(|| {
        format!(
            "{} built, but its output is not what the platform expects",
            guest.name
        )
    })?;
    fs::write(&partial, &wasm).with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &output)
        .with_context(|| format!("cannot move the output to {}", output.display()))?;
    // Stamp what is there now: a build may create inputs (a Rust guest's
    // first Cargo.lock).
    let stamp = guest.stamp()?;
    fs::write(&stamp_file, format!("{stamp}\n"))
        .with_context(|| format!("cannot write {}", stamp_file.display()))?;
    Ok(output)
}

fn build_c(sources: &[PathBuf], partial: &Path) -> Result<Vec<u8>> {
    require_on_path(
        CLANG,
        "Debian packages clang-16, lld-16, libclang-rt-16-dev-wasm32, wasi-libc",
    )?;
    let mut cmd = Command::new(CLANG);
    cmd.args(CLANG_FLAGS).arg("-o").arg(partial).args(sources);
    run_captured(&mut cmd, CLANG)?;
    let wasm = fs::read(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    fs::remove_file(partial).ok();
    Ok(wasm)
}

fn build_rust(guest: &Guest, adapter: Adapter, layout: &Layout) -> Result<Vec<u8>> {
    require_debian_rust()?;
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&guest.dir).args(RUST_BUILD_ARGS);
    if guest.dir.join("Cargo.lock").is_file() {
        // Reproducible: the committed lock file is used as is.
        cmd.arg("--locked");
    }
    scrub_cargo_env(&mut cmd);
    cmd.env("PATH", DEBIAN_PATH)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &layout.rust_target_dir);
    run_captured(&mut cmd, "cargo build (Debian rustc-web, -Zbuild-std)")?;

    // A cdylib's file name uses the crate name (dashes become underscores),
    // a binary's keeps the package name.
    let artifact_name = match adapter {
        Adapter::Proxy => guest.name.replace('-', "_"),
        Adapter::Command => guest.name.clone(),
    };
    let artifact = layout
        .rust_target_dir
        .join(RUST_TARGET)
        .join("release")
        .join(format!("{artifact_name}.wasm"));
    let module = fs::read(&artifact).with_context(|| {
        format!(
            "cannot read {} (the package must be named like its folder, `{}`)",
            artifact.display(),
            guest.name
        )
    })?;
    let adapter_bytes = match adapter {
        Adapter::Proxy => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        Adapter::Command => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    to_component(&module, adapter_bytes)
        .with_context(|| format!("cannot make a component of {}", artifact.display()))
}

fn build_js(guest: &Guest, layout: &Layout, partial: &Path) -> Result<Vec<u8>> {
    require_on_path(
        "node",
        "Node.js 20+: Debian package nodejs or the machine's own",
    )?;
    ensure_node_modules(&guest.dir)?;
    let mut cmd = Command::new("node");
    cmd.current_dir(&guest.dir)
        .arg(COMPONENTIZE_JS_CLI)
        .args(["--wit", "wit", "-o"])
        .arg(partial)
        .arg(JS_ENTRY)
        .env("XDG_CACHE_HOME", &layout.cache_dir);
    run_captured(&mut cmd, "componentize-js")?;
    let wasm = fs::read(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    Ok(wasm)
}

/// Installs the example's npm packages when they are missing or older than
/// its package-lock.json.
fn ensure_node_modules(dir: &Path) -> Result<()> {
    let installed = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let cli_present = dir.join(COMPONENTIZE_JS_CLI).is_file();
    let stale = match (fs::metadata(&installed), fs::metadata(&lock)) {
        (Ok(installed), Ok(lock)) => match (installed.modified(), lock.modified()) {
            (Ok(installed), Ok(lock)) => lock > installed,
            _ => false,
        },
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    };
    if cli_present && !stale {
        return Ok(());
    }
    require_on_path("npm", "Debian package npm")?;
    print!("(npm install, ~1 min once) ");
    let _ = io::stdout().flush();
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir);
    if lock.is_file() {
        cmd.arg("ci");
    } else {
        cmd.arg("install");
    }
    cmd.args(["--no-audit", "--no-fund"]);
    run_captured(&mut cmd, "npm")
}

fn build_python(guest: &Guest, layout: &Layout, partial: &Path) -> Result<Vec<u8>> {
    ensure_venv(&layout.venv_dir)?;
    let mut cmd = Command::new(layout.venv_dir.join("bin").join(COMPONENTIZE_PY));
    cmd.current_dir(&guest.dir)
        .args(["-d", "wit", "componentize", "-p", "."]);
    // componentize-py bundles no symlinked module: a module shared with
    // another guest is found in the folder it links to.
    for dir in linked_module_dirs(&guest.dir)? {
        cmd.arg("-p").arg(dir);
    }
    cmd.arg(PY_MODULE)
        .arg("-o")
        .arg(partial)
        .env("XDG_CACHE_HOME", &layout.cache_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_captured(&mut cmd, COMPONENTIZE_PY)?;
    // componentize-py imports the app with the host's Python and leaves a
    // bytecode cache in the source folder; it is not ours to keep.
    let _ = fs::remove_dir_all(guest.dir.join("__pycache__"));
    let wasm = fs::read(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    Ok(wasm)
}

/// The folders that symlinked `.py` files in `dir` point into.
fn linked_module_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for path in sorted_entries(dir)? {
        let linked = path.is_symlink() && path.extension().is_some_and(|e| e == "py");
        if !linked {
            continue;
        }
        let target = fs::canonicalize(&path)
            .with_context(|| format!("{} links to nothing", path.display()))?;
        if let Some(parent) = target.parent().filter(|p| !dirs.iter().any(|d| d == p)) {
            dirs.push(parent.to_path_buf());
        }
    }
    Ok(dirs)
}

/// Creates the componentize-py venv unless the pinned version is in it.
fn ensure_venv(venv: &Path) -> Result<()> {
    if componentize_py_installed(venv) {
        return Ok(());
    }
    require_on_path(
        "python3",
        "Python 3 with venv: Debian packages python3, python3-venv",
    )?;
    print!(
        "(installing {COMPONENTIZE_PY} {COMPONENTIZE_PY_VERSION} into {}) ",
        venv.display()
    );
    let _ = io::stdout().flush();
    if !venv.join("bin/python").exists() {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(venv);
        run_captured(&mut cmd, "python3 -m venv")?;
    }
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args([
        "install",
        "--quiet",
        &format!("{COMPONENTIZE_PY}=={COMPONENTIZE_PY_VERSION}"),
    ]);
    run_captured(&mut cmd, "pip install")?;
    if !componentize_py_installed(venv) {
        bail!(
            "pip ran, but {COMPONENTIZE_PY} {COMPONENTIZE_PY_VERSION} is not in {}",
            venv.display()
        );
    }
    Ok(())
}

/// Looks for the pinned dist-info folder, which costs no Python start-up.
fn componentize_py_installed(venv: &Path) -> bool {
    let dist_info = format!("componentize_py-{COMPONENTIZE_PY_VERSION}.dist-info");
    let Ok(entries) = fs::read_dir(venv.join("lib")) else {
        return false;
    };
    venv.join("bin").join(COMPONENTIZE_PY).is_file()
        && entries
            .filter_map(|entry| entry.ok())
            .any(|entry| entry.path().join("site-packages").join(&dist_info).is_dir())
}

/// `cargo xtask wrap`: writes `core` wrapped with the named adapter to `out`.
pub fn wrap(core: &Path, out: &Path, adapter: &str) -> Result<()> {
    let adapter_bytes = match adapter {
        "command" => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        "reactor" => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        "proxy" => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        other => bail!("unknown adapter `{other}`: use command, reactor or proxy"),
    };
    let module = fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
    let component = to_component(&module, adapter_bytes)
        .with_context(|| format!("cannot make a component of {}", core.display()))?;
    fs::write(out, &component).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {} ({})",
        out.display(),
        human_size(component.len() as u64)
    );
    Ok(())
}

/// Wraps a wasip1 core module into a component with a WASI adapter.
fn to_component(module: &[u8], adapter: &[u8]) -> Result<Vec<u8>> {
    ComponentEncoder::default()
        .validate(true)
        .module(module)?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)?
        .encode()
}

/// Checks the output is what the platform expects of this kind of guest: a
/// core command module that the platform's deploy-time wrapping accepts, or a
/// component with the right export.
fn check_output(guest: &Guest, wasm: &[u8]) -> Result<()> {
    const CORE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";
    const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";
    let header = wasm.get(..8).unwrap_or_default();
    match &guest.lang {
        Lang::C { .. } => {
            if header != CORE_HEADER {
                bail!("expected a core wasm module");
            }
            // What the platform does at deploy, done here as a check.
            to_component(wasm, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
                .context("wrapping it with the wasi_snapshot_preview1 command adapter failed")?;
            Ok(())
        }
        lang => {
            if header != COMPONENT_HEADER {
                bail!("expected a component");
            }
            let wanted = match lang {
                Lang::Rust {
                    adapter: Adapter::Command,
                } => "wasi:cli/run@",
                _ => "wasi:http/incoming-handler@",
            };
            let DecodedWasm::Component(resolve, world) = wit_component::decode(wasm)? else {
                bail!("expected a component, found a WIT package");
            };
            let exports: Vec<String> = resolve.worlds[world]
                .exports
                .keys()
                .map(|key| resolve.name_world_key(key))
                .collect();
            if !exports.iter().any(|name| name.starts_with(wanted)) {
                bail!("it exports {exports:?}, not {wanted}*");
            }
            Ok(())
        }
    }
}

/// Runs a tool with its output captured; shows the output only on failure.
fn run_captured(cmd: &mut Command, what: &str) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            bail!("`{program}` was not found; {SETUP_HINT}")
        }
        Err(err) => return Err(err).with_context(|| format!("cannot run `{program}`")),
    };
    if output.status.success() {
        return Ok(());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    bail!(
        "{what} failed ({}):\n{}{}",
        output.status,
        stdout.trim_end(),
        if stdout.trim().is_empty() {
            stderr.trim_end().to_string()
        } else {
            format!("\n{}", stderr.trim_end())
        }
    )
}

/// Fails with the setup hint unless `program` is on `PATH`.
fn require_on_path(program: &str, provided_by: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        bail!("`{program}` is not installed ({provided_by}); {SETUP_HINT}")
    }
}

/// Debian's rustc-web toolchain, its std sources and the wasm32 links.
fn require_debian_rust() -> Result<()> {
    let needed = [
        (DEBIAN_CARGO, "Debian package cargo-web"),
        ("/usr/bin/rustc", "Debian package rustc-web"),
        (RUST_STD_SOURCES, "Debian package rust-web-src"),
        (
            RUST_WASI_LIBC,
            "Debian package wasi-libc and the rustlib links",
        ),
        (RUST_LLD, "Debian package lld-16 and the rustlib links"),
    ];
    for (path, provided_by) in needed {
        if !Path::new(path).exists() {
            bail!("`{path}` is missing ({provided_by}); {SETUP_HINT}");
        }
    }
    let output = Command::new(DEBIAN_CARGO)
        .arg("--version")
        .env("PATH", DEBIAN_PATH)
        .output()
        .with_context(|| format!("cannot run {DEBIAN_CARGO}"))?;
    let version = String::from_utf8_lossy(&output.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(minor) if minor >= RUST_MIN_MINOR => Ok(()),
        _ => bail!(
            "{DEBIAN_CARGO} is `{}`, too old for the guests (Debian's cargo-web, 1.{RUST_MIN_MINOR}+, is needed); {SETUP_HINT}",
            version.trim()
        ),
    }
}

/// Removes what `cargo run` and rustup put in our environment, so Debian's
/// cargo does not pick up rustup's toolchain or our own build's settings.
fn scrub_cargo_env(cmd: &mut Command) {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_HTTP_",
        "CARGO_NET_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const REMOVE: &[&str] = &[
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "LD_LIBRARY_PATH",
    ];
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let cargo_var =
            key.starts_with("CARGO_") && !KEEP_PREFIXES.iter().any(|p| key.starts_with(p));
        if cargo_var || REMOVE.contains(&key.as_ref()) {
            cmd.env_remove(key.as_ref());
        }
    }
}

/// Files under `dir`, recursively, minus ignored folders and files.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            if !IGNORED_DIRS.contains(&name.as_str()) {
                walk(&path, files)?;
            }
        } else if path.is_file() {
            let ignored_extension = path
                .extension()
                .is_some_and(|ext| IGNORED_EXTENSIONS.iter().any(|e| OsStr::new(e) == ext));
            if !IGNORED_FILES.contains(&name.as_str()) && !ignored_extension {
                files.push(path);
            }
        }
    }
    Ok(())
}

/// A folder's entries, sorted; an absent folder has none.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

fn file_stem(path: &Path) -> Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable name", path.display()))
}

fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let bytes_f = bytes as f64;
    if bytes_f >= KIB * KIB {
        format!("{:.1} MiB", bytes_f / (KIB * KIB))
    } else if bytes_f >= KIB {
        format!("{:.1} KiB", bytes_f / KIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn classify_finds_each_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("rs/Cargo.toml"), "[package]");
        write(&root.join("rs/src/lib.rs"), "");
        write(&root.join("cmd/Cargo.toml"), "[package]");
        write(&root.join("cmd/src/main.rs"), "");
        write(&root.join("js/package.json"), "{}");
        write(&root.join("py/app.py"), "");
        write(&root.join("c/b.c"), "");
        write(&root.join("c/a.c"), "");
        write(&root.join("empty/README.md"), "");

        assert!(matches!(
            classify(&root.join("rs")).unwrap(),
            Some(Lang::Rust {
                adapter: Adapter::Proxy
            })
        ));
        assert!(matches!(
            classify(&root.join("cmd")).unwrap(),
            Some(Lang::Rust {
                adapter: Adapter::Command
            })
        ));
        assert!(matches!(
            classify(&root.join("js")).unwrap(),
            Some(Lang::Js)
        ));
        assert!(matches!(
            classify(&root.join("py")).unwrap(),
            Some(Lang::Python)
        ));
        match classify(&root.join("c")).unwrap() {
            Some(Lang::C { sources }) => {
                assert_eq!(sources, vec![root.join("c/a.c"), root.join("c/b.c")]);
            }
            other => panic!("expected C, got {other:?}"),
        }
        assert!(classify(&root.join("empty")).unwrap().is_none());
    }

    #[test]
    fn inputs_skip_build_outputs_and_docs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(&dir.join("app.js"), "x");
        write(&dir.join("wit/world.wit"), "x");
        write(&dir.join("node_modules/big/index.js"), "x");
        write(&dir.join("target/out.wasm"), "x");
        write(&dir.join("__pycache__/app.pyc"), "x");
        write(&dir.join("README.md"), "x");
        write(&dir.join("updraft.toml"), "x");
        let guest = Guest {
            name: "g".into(),
            lang: Lang::Js,
            dir: dir.to_path_buf(),
            whole_dir: true,
        };
        assert_eq!(
            guest.inputs().unwrap(),
            vec![dir.join("app.js"), dir.join("wit/world.wit")]
        );
    }

    #[test]
    fn stamp_follows_inputs_and_recipe() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(&dir.join("a.c"), "int main(void) { return 0; }");
        let guest = |lang| Guest {
            name: "a".into(),
            lang,
            dir: dir.to_path_buf(),
            whole_dir: true,
        };
        let c = || Lang::C {
            sources: vec![dir.join("a.c")],
        };
        let first = guest(c()).stamp().unwrap();
        assert_eq!(first, guest(c()).stamp().unwrap(), "stable");
        write(&dir.join("README.md"), "docs do not count");
        assert_eq!(first, guest(c()).stamp().unwrap(), "docs ignored");
        assert_ne!(first, guest(Lang::Js).stamp().unwrap(), "recipe counts");
        write(&dir.join("a.c"), "int main(void) { return 1; }");
        assert_ne!(first, guest(c()).stamp().unwrap(), "contents count");
    }

    #[test]
    fn the_repository_guests_are_found() {
        let guests = discover(&Layout::new().unwrap().root).unwrap();
        let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
        for expected in [
            "loop",
            "membomb",
            "trap",
            "exit3",
            "env",
            "echo",
            "bigout",
            "http-chaos",
            "hello-rust",
            "wordcount-c",
            "hello-js",
            "hello-python",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(258), "258 B");
        assert_eq!(human_size(64 * 1024 + 512), "64.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024), "12.0 MiB");
    }
}
