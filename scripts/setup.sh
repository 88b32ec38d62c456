#!/usr/bin/env bash
# Installs what Updraft needs on a Debian 12 machine, as root, for one purpose
# (see /work/shared/TOOLCHAINS.md for why each piece):
#
#   up     (`cargo xtask up`): the guest toolchains only
#     - C guests:     clang-16, lld-16, libclang-rt-16-dev-wasm32, wasi-libc
#     - Rust guests:  Debian's rustc-web, cargo-web, rust-web-src (built with
#                     -Zbuild-std for wasm32-wasip1) and the /usr/lib/rustlib links
#     - JS example:   Node.js 20+ and npm; examples/hello-js/node_modules
#     - Python:       componentize-py 0.25.1 in a venv under target/py-venv
#   cluster (`cargo xtask cluster`): up's, and Debian's nats-server
#   test   (`cargo xtask test`, CI): up's, and
#     - the peer:     wasmtime-cli 48.0.8 (`wasmtime run` / `serve`, the
#                     portability tests), built from source: ~16 min, once
#     - S3 tests:     moto's S3-compatible server, in the same venv
#     - cluster tests: Debian's nats-server (JetStream), started by the tests
#     - fuzzing:      cargo-fuzz 0.13.2 (the short fuzz runs; docs/fuzzing.md)
#     - console test: Debian's chromium and chromium-driver (headless, driven
#                     over WebDriver by crates/updraft/tests/console.rs)
#   bench  (bench/, BENCHMARKS.md): test's, and
#     - wrk (the load generator) and redis-server (the key-value baseline)
#   all    (the default): everything above
#
# Idempotent: every step says what it does and skips what is already there,
# so a second run does nothing. `apt-get update` runs only if a package is
# missing. Then build the guests with `cargo xtask guests`.
#
# Usage: scripts/setup.sh [up|cluster|test|bench|all] [--no-wasmtime]
#   --no-wasmtime   skip the wasmtime-cli step even where the purpose needs it
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$PWD/$TARGET_DIR ;; esac

WASMTIME_VERSION=48.0.8
CARGO_FUZZ_VERSION=0.13.2
COMPONENTIZE_PY_VERSION=0.25.1
MOTO_VERSION=5.2.1
NODE_MAJOR_MIN=20
VENV=$TARGET_DIR/py-venv
JS_EXAMPLE=$ROOT/examples/hello-js

PURPOSE=all
INSTALL_WASMTIME=1
for arg in "$@"; do
  case $arg in
    up|cluster|test|bench|all) PURPOSE=$arg ;;
    --no-wasmtime) INSTALL_WASMTIME=0 ;;
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
# What each purpose adds to the guest toolchains.
case $PURPOSE in up|cluster) INSTALL_WASMTIME=0 ;; esac
INSTALL_MOTO=1
case $PURPOSE in up|cluster) INSTALL_MOTO=0 ;; esac
INSTALL_NATS=1
[ "$PURPOSE" = up ] && INSTALL_NATS=0
INSTALL_BENCH=1
case $PURPOSE in up|cluster|test) INSTALL_BENCH=0 ;; esac
INSTALL_FUZZ=1
case $PURPOSE in up|cluster) INSTALL_FUZZ=0 ;; esac
INSTALL_BROWSER=1
case $PURPOSE in up|cluster) INSTALL_BROWSER=0 ;; esac

step() { printf '==> %s\n' "$*"; }
skip() { printf '    ok: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and writes /usr/lib/rustlib)" >&2
  exit 1
fi

# --- Debian packages ---------------------------------------------------------

APT_PACKAGES=(
  ca-certificates
  clang-16 lld-16 libclang-rt-16-dev-wasm32 wasi-libc       # C guests
  rustc-web cargo-web rust-web-src                           # Rust guests (rustc-web replaces Debian's rustc 1.63)
)
if [ $INSTALL_NATS -eq 1 ]; then
  APT_PACKAGES+=(nats-server)  # cluster mode's state (JetStream)
fi
if [ $INSTALL_BROWSER -eq 1 ]; then
  APT_PACKAGES+=(chromium chromium-driver)  # the web console's browser test
fi
if [ $INSTALL_BENCH -eq 1 ]; then
  APT_PACKAGES+=(wrk redis-server)  # the benchmark harness's load generator and key-value baseline
fi
# A C compiler and linker for cargo install (wasmtime-cli), if the machine has none.
[ $INSTALL_WASMTIME -eq 1 ] && ! command -v cc >/dev/null 2>&1 && APT_PACKAGES+=(gcc libc6-dev)
# curl: the README's quickstart and its test talk to the server with it.
command -v curl >/dev/null 2>&1 || APT_PACKAGES+=(curl)
# Node.js and Python only when absent: machines may bring newer ones of their own.
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
if ! command -v python3 >/dev/null 2>&1; then
  APT_PACKAGES+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  APT_PACKAGES+=(python3-venv)
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

step "Debian packages: ${APT_PACKAGES[*]}"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  skip "all installed"
else
  echo "    installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- /usr/lib/rustlib links for Debian's rustc-web ---------------------------
# Debian ships wasi-libc only under wasm32-wasi and lld as lld-16; rustc looks
# for them under its own sysroot.

step "rustlib links (wasi-libc for wasm32-wasip1/p2, rust-lld -> lld-16)"
link() { # link TARGET LINKNAME: create or fix a symlink
  if [ "$(readlink "$2" 2>/dev/null)" = "$1" ]; then
    return 1
  fi
  mkdir -p "$(dirname "$2")"
  ln -sfn "$1" "$2"
  echo "    linked $2 -> $1"
}
changed=0
for t in wasm32-wasip1 wasm32-wasip2; do
  for f in crt1-command.o crt1-reactor.o libc.a; do
    link "/usr/lib/wasm32-wasi/$f" "/usr/lib/rustlib/$t/lib/self-contained/$f" && changed=1
  done
done
link /usr/bin/lld-16 /usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld && changed=1
[ $changed -eq 1 ] || skip "present"

# --- Node packages of the JavaScript example ---------------------------------

step "npm packages of examples/hello-js (componentize-js)"
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
# node_modules counts as installed only if it was made from this exact lock
# file (a stale one, e.g. from before a dependency was added, is redone).
lock_sha=$(sha256sum "$JS_EXAMPLE/package-lock.json" | cut -d' ' -f1)
lock_stamp=$JS_EXAMPLE/node_modules/.updraft-lock-sha256
if [ -f "$lock_stamp" ] && [ "$(cat "$lock_stamp")" = "$lock_sha" ]; then
  skip "node_modules matches package-lock.json"
elif [ "$node_major" -lt "$NODE_MAJOR_MIN" ]; then
  echo "    WARNING: Node.js $(node --version 2>/dev/null || echo missing) is older than $NODE_MAJOR_MIN;" \
       "componentize-js needs $NODE_MAJOR_MIN+, so the hello-js example will not build here." >&2
else
  echo "    npm ci in $JS_EXAMPLE (~385 MB, about a minute)"
  (cd "$JS_EXAMPLE" && npm ci --no-audit --no-fund)
  echo "$lock_sha" > "$lock_stamp"
fi

# --- componentize-py venv ----------------------------------------------------

step "componentize-py $COMPONENTIZE_PY_VERSION in $VENV"
if compgen -G "$VENV/lib/python3*/site-packages/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" >/dev/null \
   && [ -x "$VENV/bin/componentize-py" ]; then
  skip "installed"
else
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
  echo "    installed"
fi

# --- moto (an S3-compatible server for the S3 blob backend's tests) ---------

step "moto[server] $MOTO_VERSION in $VENV"
if [ $INSTALL_MOTO -eq 0 ]; then
  skip "not needed for '$PURPOSE'"
elif compgen -G "$VENV/lib/python3*/site-packages/moto-$MOTO_VERSION.dist-info" >/dev/null \
   && [ -x "$VENV/bin/moto_server" ]; then
  skip "installed"
else
  "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
  echo "    installed"
fi

# --- wasmtime-cli ------------------------------------------------------------
# Built from source by cargo (no prebuilt download is reachable): ~16 min, once
# per machine. The binary lands in ~/.cargo/bin (or $CARGO_HOME/bin).

step "wasmtime-cli $WASMTIME_VERSION"
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
wasmtime_version() {
  local exe
  for exe in "$(command -v wasmtime 2>/dev/null || true)" "$CARGO_BIN/wasmtime"; do
    if [ -n "$exe" ] && [ -x "$exe" ]; then
      "$exe" --version 2>/dev/null | awk '{print $2}'
      return
    fi
  done
}
have=$(wasmtime_version)
if [ "$have" = "$WASMTIME_VERSION" ]; then
  skip "wasmtime $have"
elif [ $INSTALL_WASMTIME -eq 0 ]; then
  skip "not needed for '$PURPOSE' (found: ${have:-none})"
else
  cargo=$(command -v cargo || echo /usr/bin/cargo)
  echo "    found: ${have:-none}; running $cargo install wasmtime-cli --version $WASMTIME_VERSION --locked (~16 min, once per machine)"
  "$cargo" install wasmtime-cli --version "$WASMTIME_VERSION" --locked
fi

# --- cargo-fuzz ----------------------------------------------------------------
# Builds and runs the fuzz targets under fuzz/ (about a minute to install).
# They build on the stable toolchain, without a sanitizer.

step "cargo-fuzz $CARGO_FUZZ_VERSION"
have=$( { "$CARGO_BIN/cargo-fuzz" --version 2>/dev/null || cargo-fuzz --version 2>/dev/null || true; } | awk '{print $2}' | head -n1)
if [ "$have" = "$CARGO_FUZZ_VERSION" ]; then
  skip "cargo-fuzz $have"
elif [ $INSTALL_FUZZ -eq 0 ]; then
  skip "not needed for '$PURPOSE' (found: ${have:-none})"
else
  cargo=$(command -v cargo || echo /usr/bin/cargo)
  echo "    found: ${have:-none}; running $cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked"
  "$cargo" install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

step "done; build the guests with: cargo xtask guests"
