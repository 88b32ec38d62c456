//! updraft-bench: the end-to-end benchmark harness. One run starts a native
//! hyper hello, `wasmtime serve` (fresh instance per request, and with
//! instance reuse) and `updraft up` on this machine, drives each with wrk, times
//! Updraft's cold paths, reads its resident memory, times key-value operations
//! from a guest against Redis, measures async events end to end and function-to-function calls, times a guest's outgoing HTTP calls against a native hyper client's, sets a 3-node cluster over NATS beside an embedded server, and reports it all as JSON and as the Markdown
//! of `BENCHMARKS.md`.
//!
//! Modules, in the order a run uses them: [`run`] (locating programs, the
//! phases), [`servers`] (child processes, RSS), [`updraft`] (its API),
//! [`native`] (the baseline server), [`wrk`] and [`load`] (warm load),
//! [`cold`] with [`instantiate`], [`memory`], [`kv`], [`events`], [`calls`], [`outbound`], [`cluster`], then [`report`] (JSON, Markdown, targets) with
//! [`stats`]; [`http`] is the tiny client the control requests use.
//! [`compare`] puts two runs side by side. [`fairness`] is a run of its
//! own (`updraft-bench fairness`): a light tenant's latency beside another
//! tenant's CPU and memory hogs; [`inflight`] another
//! (`updraft-bench inflight`): ten thousand sleeping invocations at once;
//! [`overload`] another (`updraft-bench overload`): a CPU-costing function
//! at up to four times the rate the server sustains; [`elasticity`]
//! another (`updraft-bench elasticity`): demand against supply under a
//! step and a ramp, with the SPEC RG metrics and a plot; [`languages`]
//! another (`updraft-bench languages`): hello-python and hello-js on
//! Updraft against `wasmtime serve`.

pub mod calls;
pub mod cluster;
pub mod cold;
pub mod compare;
pub mod elasticity;
pub mod events;
pub mod fairness;
pub mod http;
pub mod inflight;
pub mod instantiate;
pub mod kv;
pub mod languages;
pub mod load;
pub mod memory;
pub mod native;
pub mod outbound;
pub mod overload;
pub mod report;
pub mod run;
pub mod servers;
pub mod stats;
pub mod updraft;
pub mod wrk;
