//! `cargo xtask`: the project's build tasks that are not plain `cargo build`.
//!
//! - `guests` builds every Wasm guest (the examples under `examples/` and the
//!   test guests under `tests/guests/`) into `target/guests/<name>.wasm`,
//!   skipping those whose inputs have not changed (see [`guests`]).
//! - `up` and `test` are the README's two commands (see [`flow`]);
//!   `cluster` starts NATS and several nodes on this machine.
//! - `fuzz` runs the fuzz targets under `fuzz/` for longer (see [`fuzz`]).
//! - `wrap` makes a component of a wasip1 core module, as the platform does
//!   at deploy (`wasm-tools component new` without the tool).
//! - `extract-wit` prints the WIT packages a component was built against into
//!   a folder, e.g. to get the `wasi:*` WIT that componentize-js's engine
//!   exports (see [`wit`]).
//!
//! The toolchains themselves (clang, Debian's Rust, Node, Python) are
//! installed by `scripts/setup.sh`; this crate only drives them.

mod flow;
mod fuzz;
mod guests;
mod wit;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

pub(crate) const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  guests [--force] [--list] [NAME...]
      Build the Wasm guests (examples/ and tests/guests/) into target/guests/.
      Up-to-date guests are skipped; --force rebuilds them, --list only shows
      them and whether they are up to date. NAMEs restrict the build.
  wrap <CORE.wasm> <OUT.wasm> [command|reactor|proxy]
      Make a component of a wasip1 core module with a WASI adapter (command
      by default), as the platform does at deploy.
  extract-wit <COMPONENT.wasm> <OUT-DIR>
      Write the WIT packages a component uses to OUT-DIR/deps/*.wit and print
      the component's own world.
  up [ARGS...]
      Install what is missing (scripts/setup.sh), build the guests, start
      Updraft on 127.0.0.1:8080 with data in ./.updraft and deploy the
      examples. ARGS go to `updraft up`.
  cluster [N]
      Install what is missing, start nats-server (JetStream, data in
      ./.updraft-cluster) and N Updraft nodes (3 by default) on
      127.0.0.1:8081.. over it, and deploy the examples through the first.
      Every node serves every function; Ctrl-C stops them all.
  test [ARGS...]
      Install what is missing, build the guests, then cargo fmt --check,
      clippy -D warnings and cargo test --workspace (ARGS go to cargo test);
      without ARGS, also the end-to-end suites in cluster mode and every
      fuzz target for 20 s on a fresh copy of its seeds. This is what CI runs.
  fuzz [TARGET] [--seconds N]
      Build the fuzz targets (cargo fuzz, stable toolchain, no sanitizer)
      and run TARGET, or each of manifest, router, cloudevents, deploy_wasm,
      deploy_multipart, kv_journal, queue_codec in turn, for N seconds (300
      by default) on the corpus kept in fuzz/target/corpus/<target> (seeded
      from fuzz/corpus/). A crash fails it, naming the input; see
      docs/fuzzing.md.
  help
      Show this text.
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        print!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "guests" => {
            let mut options = guests::Options::default();
            for arg in rest {
                match arg.as_str() {
                    "--force" | "-f" => options.force = true,
                    "--list" | "-l" => options.list = true,
                    flag if flag.starts_with('-') => {
                        bail!("unknown flag `{flag}` for `guests`\n\n{USAGE}")
                    }
                    name => options.only.push(name.to_string()),
                }
            }
            guests::run(&options)
        }
        "wrap" => match rest.as_slice() {
            [core, out] => guests::wrap(&PathBuf::from(core), &PathBuf::from(out), "command"),
            [core, out, adapter] => {
                guests::wrap(&PathBuf::from(core), &PathBuf::from(out), adapter)
            }
            _ => bail!("`wrap` takes <CORE.wasm> <OUT.wasm> [command|reactor|proxy]\n\n{USAGE}"),
        },
        "extract-wit" => match rest.as_slice() {
            [component, out_dir] => {
                wit::extract(&PathBuf::from(component), &PathBuf::from(out_dir))
            }
            _ => bail!("`extract-wit` takes <COMPONENT.wasm> <OUT-DIR>\n\n{USAGE}"),
        },
        "up" => flow::up(&rest),
        "test" => flow::test(&rest),
        "cluster" => flow::cluster(&rest),
        "fuzz" => fuzz::command(&rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
