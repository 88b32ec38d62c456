//! Instantiation cost, pooled (copy-on-write memory images) against on-demand
//! allocation, for the hello wasi:http component and a wasip1 command module
//! (wrapped at prepare). One `Store` plus one instance per iteration: the
//! per-invocation work Updraft does before the guest runs.
//!
//! Run: `cargo xtask guests && cargo bench -p updraft-sandbox --bench instantiate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use updraft_core::{Digest, Limits};
use updraft_sandbox::{PrepareSpec, Prepared, Sandbox, SandboxConfig};

fn guest(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("guests").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests with `cargo xtask guests`",
            path.display()
        )
    })
}

fn prepare(sandbox: &Sandbox, name: &str) -> Arc<Prepared> {
    let wasm = guest(name);
    let source = || Ok(bytes::Bytes::from(wasm.clone()));
    Arc::new(
        sandbox
            .prepare(PrepareSpec {
                name,
                wasm: &source,
                wasm_digest: Digest::of(&wasm),
                kind: None,
                limits: Limits::default(),
                env: Vec::new(),
                args: Vec::new(),
                argv0: None,
                files: None,
                files_writable: false,
                tmp_mb: 0,
                grants: updraft_sandbox::Grants::default(),
                tiering: updraft_sandbox::Tiering::Off,
            })
            .unwrap(),
    )
}

fn instantiate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("instantiate");
    for pooling in [true, false] {
        let mut config =
            SandboxConfig::new(cache.path().join(if pooling { "pool" } else { "demand" }));
        config.pooling = pooling;
        config.instances_max = 100;
        let sandbox = runtime.block_on(async { Sandbox::new(config).unwrap() });
        let allocation = if pooling { "pooled" } else { "on-demand" };
        for guest_name in ["hello-rust", "echo"] {
            let prepared = prepare(&sandbox, guest_name);
            group.bench_function(format!("{guest_name}/{allocation}"), |b| {
                b.to_async(&runtime)
                    .iter(|| async { sandbox.instantiate_only(&prepared).await.unwrap() })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, instantiate);
criterion_main!(benches);
