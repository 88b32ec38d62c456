//! `updraft-bench compare BEFORE.json AFTER.json`: two runs side by side,
//! each line with its ratio after ÷ before, as the Markdown table
//! `BENCHMARKS.md` keeps for every change that must not cost speed. A line
//! whose ratio moves more than [`NOISE`] the wrong way is marked, so a
//! regression cannot hide in a long table.

use crate::cluster::{CLUSTER, EMBEDDED};
use crate::report::{Report, UPDRAFT_UNMETERED};

/// How far a ratio may move either way and still be noise on these shared
/// 2-core machines (the peers' own numbers move this much between runs).
pub const NOISE: f64 = 0.05;

/// Whether more is better (throughput) or less (latency, memory).
#[derive(Clone, Copy)]
enum Better {
    More,
    Less,
}

struct Line {
    metric: String,
    before: Option<f64>,
    after: Option<f64>,
    better: Better,
}

/// Every metric both runs can have, in the order of the results section.
fn lines(b: &Report, a: &Report) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut push = |metric: String, get: &dyn Fn(&Report) -> Option<f64>, better| {
        lines.push(Line {
            metric,
            before: get(b),
            after: get(a),
            better,
        });
    };
    for c in b.setup.concurrencies.clone() {
        for server in ["updraft", "updraft-reuse"] {
            let rps = move |r: &Report| r.load(server, c).map(|l| l.rps);
            let p50 = move |r: &Report| r.load(server, c).map(|l| l.p50_us);
            push(format!("{server} c={c} req/s"), &rps, Better::More);
            push(format!("{server} c={c} p50 µs"), &p50, Better::Less);
        }
        for (server, peer) in [
            ("updraft", "native"),
            ("updraft", "wasmtime-serve"),
            ("updraft-reuse", "wasmtime-serve-reuse"),
        ] {
            let ratio = move |r: &Report| r.ratio(server, peer, c).map(|x| x.rps);
            let name = format!("{server} ÷ {peer} req/s, c={c} (same run)");
            push(name, &ratio, Better::More);
        }
    }
    for peer in ["native", "wasmtime-serve"] {
        let rps = move |r: &Report| r.load(peer, 64).map(|l| l.rps);
        let name = format!("{peer} c=64 req/s (a peer: the machine's noise)");
        push(name, &rps, Better::More);
    }
    push(
        "deploy PUT→201 p50 µs".into(),
        &|r| Some(r.cold.deploy.p50_us),
        Better::Less,
    );
    push(
        "first response after deploy p50 µs".into(),
        &|r| Some(r.cold.after_deploy.p50_us),
        Better::Less,
    );
    push(
        "first response after unload p50 µs".into(),
        &|r| r.cold.after_unload.as_ref().map(|s| s.p50_us),
        Better::Less,
    );
    push(
        "restart spawn→200 p50 µs".into(),
        &|r| Some(r.cold.restart_spawn_to_200.p50_us),
        Better::Less,
    );
    push(
        "memory KB per idle function".into(),
        &|r| Some(r.memory.kb_per_idle_function),
        Better::Less,
    );
    push(
        "memory KB per in-flight instance".into(),
        &|r| Some(r.memory.kb_per_in_flight_instance),
        Better::Less,
    );
    push(
        "key-value get p50 ns (guest)".into(),
        &|r| r.kv.point("updraft-guest", "get").map(|p| p.p50_ns as f64),
        Better::Less,
    );
    push(
        "key-value set p50 ns (guest)".into(),
        &|r| r.kv.point("updraft-guest", "set").map(|p| p.p50_ns as f64),
        Better::Less,
    );
    for op in ["get", "set"] {
        let p50 = move |r: &Report| {
            r.kv.point(crate::kv::UPDRAFT_GUEST_NATS, op)
                .map(|p| p.p50_ns as f64)
        };
        push(
            format!("key-value {op} p50 ns (guest, stores in NATS)"),
            &p50,
            Better::Less,
        );
    }
    push(
        "events: sync req/s".into(),
        &|r| Some(r.events.sync_rps),
        Better::More,
    );
    push(
        "events: async events/s end to end".into(),
        &|r| Some(r.events.events_per_s),
        Better::More,
    );
    push(
        "events: batched events/s".into(),
        &|r| Some(r.events.batch_events_per_s),
        Better::More,
    );
    push(
        "events: events/s to the direct consumer".into(),
        &|r| Some(r.events.direct_events_per_s),
        Better::More,
    );
    push(
        "events: big batches/s to the direct consumer".into(),
        &|r| Some(r.events.direct_big_events_per_s),
        Better::More,
    );
    push(
        "calls: direct p50 ns".into(),
        &|r| Some(r.calls.call_p50_ns as f64),
        Better::Less,
    );
    push(
        "calls: to a reused instance p50 ns".into(),
        &|r| Some(r.calls.call_reuse_p50_ns as f64),
        Better::Less,
    );
    push(
        "calls: to an http callee p50 ns".into(),
        &|r| Some(r.calls.call_http_callee_p50_ns as f64),
        Better::Less,
    );
    push(
        "calls: the same over HTTP p50 ns".into(),
        &|r| Some(r.calls.http_p50_ns as f64),
        Better::Less,
    );
    for server in ["updraft", UPDRAFT_UNMETERED] {
        let rps = move |r: &Report| {
            r.metering
                .iter()
                .find(|l| l.server == server)
                .map(|l| l.rps)
        };
        push(
            format!("metering rounds: {server} req/s"),
            &rps,
            Better::More,
        );
    }
    // Cluster mode: absent (skipped) in runs without nats-server or from
    // before the phase, and then left out.
    push(
        "cluster: warm req/s, one node".into(),
        &|r| r.cluster.warm.as_ref().map(|w| w.cluster.rps),
        Better::More,
    );
    push(
        "cluster ÷ embedded warm req/s (same run)".into(),
        &|r| r.cluster.warm.as_ref().map(|w| w.ratio),
        Better::More,
    );
    push(
        "cluster: async events/s end to end".into(),
        &|r| r.cluster.events.as_ref().map(|e| e.cluster_events_per_s),
        Better::More,
    );
    push(
        "cluster ÷ embedded async events/s (same run)".into(),
        &|r| r.cluster.events.as_ref().map(|e| e.ratio),
        Better::More,
    );
    for change in ["config", "code"] {
        let p50 = move |r: &Report| r.cluster.deploy(change).map(|d| d.cluster_invocable.p50_us);
        push(
            format!("cluster: deploy → invocable on every node p50 µs ({change})"),
            &p50,
            Better::Less,
        );
        let ratio = move |r: &Report| r.cluster.deploy(change).map(|d| d.ratio);
        push(
            format!("cluster ÷ embedded deploy → invocable p50 ({change}, same run)"),
            &ratio,
            Better::Less,
        );
    }
    for op in ["get", "set"] {
        for (system, label) in [(CLUSTER, "cluster"), (EMBEDDED, "embedded beside it")] {
            let p50 = move |r: &Report| r.cluster.kv_point(system, op).map(|p| p.p50_ns as f64);
            push(
                format!("cluster phase: key-value {op} p50 ns ({label})"),
                &p50,
                Better::Less,
            );
        }
    }
    lines
}

/// The Markdown table: metric, before, after, after ÷ before, and a mark
/// on each ratio outside ±[`NOISE`] the wrong way.
pub fn markdown(before: &Report, after: &Report) -> String {
    // The binary, not the commit: both runs of one comparison are usually
    // driven from the same checkout.
    let name = |r: &Report| r.setup.updraft_bin.clone();
    let mut out = format!(
        "| metric | before ({}) | after ({}) | after ÷ before |\n| --- | ---: | ---: | ---: |\n",
        name(before),
        name(after)
    );
    let mut worse = Vec::new();
    for line in lines(before, after) {
        let (Some(b), Some(a)) = (line.before, line.after) else {
            continue;
        };
        let ratio = if b == 0.0 { f64::NAN } else { a / b };
        let regressed = match line.better {
            Better::More => ratio < 1.0 - NOISE,
            Better::Less => ratio > 1.0 + NOISE,
        };
        let mark = if regressed { " ⚠" } else { "" };
        if regressed {
            worse.push(line.metric.clone());
        }
        out.push_str(&format!(
            "| {} | {} | {} | {ratio:.3}{mark} |\n",
            line.metric,
            value(b),
            value(a)
        ));
    }
    out.push('\n');
    if worse.is_empty() {
        out.push_str(&format!(
            "Every line is within ±{:.0}% or better.\n",
            NOISE * 100.0
        ));
    } else {
        out.push_str(&format!(
            "⚠ worse by more than {:.0}%: {}.\n",
            NOISE * 100.0,
            worse.join("; ")
        ));
    }
    out
}

/// A value as the tables show it: thousands grouped, ratios with decimals.
fn value(v: f64) -> String {
    if v.abs() < 10.0 {
        return format!("{v:.3}");
    }
    let whole = format!("{:.0}", v);
    let (sign, digits) = whole
        .strip_prefix('-')
        .map_or(("", whole.as_str()), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{sign}{grouped}")
}

#[cfg(test)]
mod tests {
    use super::value;

    #[test]
    fn values_read_like_the_tables() {
        assert_eq!(value(46987.4), "46,987");
        assert_eq!(value(424.0), "424");
        assert_eq!(value(0.8269), "0.827");
        assert_eq!(value(1_000_000.0), "1,000,000");
    }
}
