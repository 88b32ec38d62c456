// Functions: the list, and one function's page — its versions and rollback,
// latency, invoking it, async status, recent invocations (from the usage
// records), dead letters with redrive, and its live logs.

import { getJson, getNdjson, postJson, request, seg, streamNdjson } from "./api.js";
import {
  announce, errorBox, facts, field, formatBytes, formatNumber, formatTime, h, section, table,
} from "./dom.js";

/** Log lines kept on the page; older ones scroll away. */
const LOG_LINES_MAX = 1000;
/** Recent invocations shown. */
const RECENT_MAX = 20;
/** Usage records read per page, and pages per window, for them. */
const RECORD_PAGE = 2000;
const RECORD_PAGES_MAX = 5;
/** Bytes of a response shown; the rest is cut. */
const OUTPUT_CHARS_MAX = 64 * 1024;

function routeLink(route, tenant) {
  if (!route) return h("span", { className: "muted" }, "none");
  const path = tenant && tenant !== "local" ? `/~${tenant}${route}` : route;
  return h("code", {}, path);
}

export async function functionsView(main, _params, { signal, session }) {
  const body = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const refresh = h("button", { type: "button", onclick: () => load(true) }, "Refresh");
  main.append(
    h("div", { className: "row spread" }, h("h1", {}, "Functions"), refresh),
    body,
  );
  async function load(announced) {
    try {
      const list = await getJson("/v1/functions", { signal });
      const functions = list.functions || [];
      if (functions.length === 0) {
        body.replaceChildren(h("div", { className: "panel" },
          h("p", {}, "No functions yet. Deploy one with ", h("code", {}, "updraft deploy updraft.toml"),
            " (see the quickstart in the README)."),
        ));
      } else {
        body.replaceChildren(h("div", { className: "panel" }, table(
          `${functions.length} function${functions.length === 1 ? "" : "s"}`,
          ["Name", "Kind", "Route", "Version", "Versions", "Size", "Updated"],
          functions.map((f) => [
            h("a", { href: `#/functions/${seg(f.name)}`, "data-function": f.name }, f.name),
            f.kind, routeLink(f.route, session.tenant), `v${f.version}`, formatNumber(f.versions),
            formatBytes(f.wasm_bytes), f.updated_at,
          ]),
          { numeric: [4, 5] },
        )));
      }
      if (announced) announce(`${functions.length} functions`);
    } catch (error) {
      if (error.name === "AbortError") return;
      body.replaceChildren(errorBox(error));
    }
  }
  await load(false);
}

export async function functionView(main, { name }, { signal, session }) {
  const path = `/v1/functions/${seg(name)}`;
  main.append(
    h("p", {}, h("a", { href: "#/functions" }, "← All functions")),
    h("h1", {}, name),
  );
  let info;
  try {
    info = await getJson(path, { signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    main.append(errorBox(error));
    return;
  }
  const overview = h("div");
  const versions = h("div");
  const showInfo = (details) => {
    info = details;
    overview.replaceChildren(overviewFacts(details, session));
    versions.replaceChildren(versionsTable(details, path, showInfo, signal));
  };
  showInfo(info);

  const metrics = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const recent = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const dead = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const status = asyncStatus(signal);
  const logs = logsPanel(name, signal);

  main.append(
    h("div", { className: "grid two" },
      section("Overview", overview, h("p", {}, h("a", { href: `#/usage/${seg(name)}` }, "Usage and cost of this function"))),
      section("Latency and starts", metrics)),
    section("Versions", versions),
    h("div", { className: "grid two" },
      section("Invoke", invokeForm(name, status, signal)),
      section("Async invocation status", status.element)),
    section("Recent invocations", recent),
    section("Dead letters", dead),
    section("Logs", logs.element),
  );
  loadMetrics(name, metrics, signal);
  loadRecent(name, recent, status, signal);
  loadDeadLetters(name, dead, signal);
  logs.start();
}

function overviewFacts(info, session) {
  const limits = info.limits || {};
  const artifact = info.artifact || {};
  const aliases = Object.entries(info.aliases || {}).map(([alias, v]) => `${alias} → v${v}`).join(", ");
  return facts([
    ["Kind", info.kind],
    ["Route", info.route ? routeLink(info.route, session.tenant) : "none (invoke through the API)"],
    ["Access", info.auth === "key" ? "API key of this tenant" : "public"],
    ["Serving", info.version ? `v${info.version}` : "–"],
    ["Aliases", aliases],
    ["Digest", info.digest ? h("span", { className: "mono" }, info.digest) : null],
    ["Memory", limits.memory_mb ? `${limits.memory_mb} MB` : null],
    ["Timeout", limits.timeout_ms ? `${formatNumber(limits.timeout_ms)} ms` : null],
    ["Async attempts", limits.retry ? formatNumber(limits.retry.max_attempts) : null],
    ["Code", artifact.loaded ? `in memory (${artifact.loaded_from || "loaded"})` : "on disk (scaled to zero)"],
    ["Key-value stores", (info.key_value_stores || []).join(", ")],
    ["Blob containers", (info.blob_containers || []).join(", ")],
    ["Updated", info.updated_at],
  ]);
}

function versionsTable(info, path, showInfo, signal) {
  const latest = (info.aliases || {}).latest;
  const out = h("div", { "aria-live": "polite" });
  const rollback = async (button, version) => {
    button.disabled = true;
    out.replaceChildren();
    try {
      const body = version === undefined ? undefined : { version };
      const details = await postJson(`${path}/rollback`, body, { signal });
      const now = (details.aliases || {}).latest;
      showInfo(details);
      announce(`Rolled back: latest is now v${now}`);
    } catch (error) {
      if (error.name === "AbortError") return;
      button.disabled = false;
      out.append(errorBox(error));
    }
  };
  const rows = (info.versions || []).map((v) => {
    const aliases = Object.entries(info.aliases || {}).filter(([, n]) => n === v.version).map(([a]) => a);
    const action = v.version === latest
      ? h("span", { className: "badge ok" }, "latest")
      : h("button", {
        type: "button", "data-rollback": v.version,
        onclick: (event) => rollback(event.currentTarget, v.version),
      }, `Roll back to v${v.version}`);
    return [`v${v.version}`, v.created_at, v.kind, formatBytes(v.wasm_bytes),
      h("span", { className: "mono" }, (v.digest || "").slice(0, 19)), aliases.join(", "), action];
  });
  const previous = h("button", {
    type: "button", id: "rollback-previous", disabled: (info.versions || []).length < 2,
    onclick: (event) => rollback(event.currentTarget, undefined),
  }, "Roll back to the previous version");
  return h("div", {},
    table(`${rows.length} version${rows.length === 1 ? "" : "s"}, newest first`,
      ["Version", "Deployed", "Kind", "Size", "Digest", "Aliases", "Action"], rows, { numeric: [3] }),
    h("div", { className: "row" }, previous),
    h("p", { className: "muted" }, "Rolling back moves the alias latest, which routes and invokes use; no version is deleted."),
    out);
}

async function loadMetrics(name, host, signal) {
  try {
    const response = await request("GET", `/v1/functions/${seg(name)}/metrics`, { signal, accept404: true });
    if (response.status === 404) {
      host.replaceChildren(h("p", { id: "metrics-empty" }, "No data yet."));
      return;
    }
    const m = await response.json();
    const ms = (v) => (v === null || v === undefined ? "–" : `${formatNumber(v, 1)} ms`);
    const d = m.duration_ms || {};
    host.replaceChildren(facts([
      ["Requests", formatNumber(m.requests)],
      ["Errors", formatNumber(m.errors)],
      ["Cold starts", formatNumber(m.cold_starts)],
      ["Warm starts", formatNumber(m.warm_starts)],
      ["p50", ms(d.p50)],
      ["p90", ms(d.p90)],
      ["p99", ms(d.p99)],
    ], "stats"));
  } catch (error) {
    if (error.name === "AbortError") return;
    host.replaceChildren(errorBox(error));
  }
}

function invokeForm(name, status, signal) {
  const body = h("textarea", { name: "body", rows: 4, spellcheck: "false" });
  const mode = h("select", { name: "mode" },
    h("option", { value: "sync" }, "Wait for the response"),
    h("option", { value: "async" }, "Async: queue it, with retries"));
  const output = h("div", { "aria-live": "polite" });
  const button = h("button", { type: "submit", className: "primary" }, "Invoke");
  return h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      output.replaceChildren(h("p", { className: "muted" }, "Running…"));
      const async = mode.value === "async";
      const url = `/v1/functions/${seg(name)}/invoke${async ? "?mode=async" : ""}`;
      try {
        const started = performance.now();
        const response = await request("POST", url, { body: body.value, signal });
        const elapsed = performance.now() - started;
        if (async) {
          const accepted = await response.json();
          output.replaceChildren(h("p", {}, `Accepted: ${accepted.id}`));
          status.lookup(accepted.id);
        } else {
          const text = await response.text();
          const id = response.headers.get("updraft-invocation-id");
          output.replaceChildren(
            h("p", {}, `${response.status} in ${formatNumber(elapsed, 0)} ms`, id ? ` — invocation ${id}` : ""),
            h("pre", { className: "output", tabindex: "0", "aria-label": "Response body" },
              text.length > OUTPUT_CHARS_MAX ? `${text.slice(0, OUTPUT_CHARS_MAX)}\n… (cut)` : text || "(empty body)"));
        }
        announce("Invocation done");
      } catch (error) {
        if (error.name === "AbortError") return;
        output.replaceChildren(errorBox(error));
      } finally {
        button.disabled = false;
      }
    },
  },
  field("Request body", body, "Sent as the body; an HTTP function sees POST /."),
  field("Mode", mode),
  h("div", { className: "row" }, button),
  output);
}

function asyncStatus(signal) {
  const input = h("input", { type: "text", name: "invocation", spellcheck: "false", autocomplete: "off" });
  const output = h("div", { "aria-live": "polite" });
  async function lookup(id) {
    input.value = id;
    output.replaceChildren(h("p", { className: "muted" }, "Looking up…"));
    try {
      const s = await getJson(`/v1/invocations/${seg(id)}`, { signal });
      const result = s.result || null;
      output.replaceChildren(facts([
        ["Status", h("span", { className: `badge ${s.status === "succeeded" ? "ok" : s.status === "dead" ? "bad" : "warn"}` }, s.status)],
        ["Attempts", formatNumber(s.attempts)],
        ["Queued", formatTime(s.enqueued_ms)],
        ["Started", s.started_ms ? formatTime(s.started_ms) : null],
        ["Finished", s.finished_ms ? formatTime(s.finished_ms) : null],
        ["Next attempt", s.next_attempt_ms ? formatTime(s.next_attempt_ms) : null],
        ["Error", s.error],
        ["Result", result ? `HTTP ${result.status}` : null],
      ]));
    } catch (error) {
      if (error.name === "AbortError") return;
      output.replaceChildren(errorBox(error));
    }
  }
  const form = h("form", {
    className: "inline-form",
    onsubmit: (event) => {
      event.preventDefault();
      if (input.value.trim()) lookup(input.value.trim());
    },
  }, field("Invocation id", input), h("button", { type: "submit" }, "Look up"));
  return { element: h("div", {}, form, output), lookup };
}

/**
 * The function's last invocations, from the usage records (there is no
 * per-function list): the newest window that has some, up to a day back.
 */
async function loadRecent(name, host, status, signal) {
  const now = Date.now();
  // Records come oldest first, a page at a time: the narrowest window that
  // has enough keeps what a busy server sends small.
  const windows = [60 * 1000, 10 * 60 * 1000, 60 * 60 * 1000, 24 * 60 * 60 * 1000];
  try {
    let mine = [];
    for (const span of windows) {
      const from = new Date(now - span).toISOString().replace(/\.\d+Z$/, "Z");
      let cursor = null;
      mine = [];
      // A few pages at most: the console is not a log search.
      for (let page = 0; page < RECORD_PAGES_MAX; page += 1) {
        const query = `from=${encodeURIComponent(from)}&limit=${RECORD_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
        const { rows, next } = await getNdjson(`/v1/usage/records?${query}`, { signal });
        mine.push(...rows.filter((r) => r.function === name && r.trigger !== "storage"));
        if (!next) break;
        cursor = next;
      }
      if (mine.length >= RECENT_MAX) break;
    }
    const shown = mine.slice(-RECENT_MAX).reverse();
    if (shown.length === 0) {
      host.replaceChildren(h("p", {}, "No invocations in the last 24 hours."));
      return;
    }
    host.replaceChildren(table(`The last ${shown.length} invocations, newest first`,
      ["Started", "Trigger", "Version", "Duration", "Billed", "Memory peak", "Result", "Invocation"],
      shown.map((r) => [
        formatTime(r.start_ms), r.trigger, `v${r.version}`, `${formatNumber(r.wall_us / 1000, 1)} ms`,
        `${formatNumber(r.billed_ms)} ms`, formatBytes(r.memory_peak_bytes),
        r.error ? h("span", { className: "badge bad" }, r.error) : h("span", { className: "badge ok" }, "ok"),
        r.trigger === "async"
          ? h("button", { type: "button", className: "link", onclick: () => status.lookup(r.invocation_id) }, `status of ${r.invocation_id.slice(0, 13)}…`)
          : h("span", { className: "mono" }, r.invocation_id),
      ]),
      { numeric: [3, 4, 5] }));
  } catch (error) {
    if (error.name === "AbortError") return;
    host.replaceChildren(errorBox(error));
  }
}

async function loadDeadLetters(name, host, signal) {
  const path = `/v1/functions/${seg(name)}/dlq`;
  const output = h("div", { "aria-live": "polite" });
  try {
    const dlq = await getJson(path, { signal });
    const letters = dlq.dead_letters || [];
    const redrive = h("button", {
      type: "button", id: "redrive", disabled: letters.length === 0,
      onclick: async () => {
        redrive.disabled = true;
        try {
          const moved = await postJson(`${path}/redrive`, undefined, { signal });
          announce(`${moved.redriven} dead letters queued again`);
          await loadDeadLetters(name, host, signal);
          host.append(h("p", { role: "status", id: "redrive-done" }, `${moved.redriven} dead letter${moved.redriven === 1 ? "" : "s"} queued again, attempts reset.`));
        } catch (error) {
          if (error.name === "AbortError") return;
          redrive.disabled = false;
          output.replaceChildren(errorBox(error));
        }
      },
    }, "Redrive all");
    const list = letters.length === 0
      ? h("p", { id: "dlq-empty" }, "No dead letters.")
      : table(`${letters.length} dead letter${letters.length === 1 ? "" : "s"}, oldest first`,
        ["Id", "Queued", "Attempts", "Last error", "Payload"],
        letters.map((d) => [h("span", { className: "mono" }, d.id), formatTime(d.enqueued_ms),
          formatNumber(d.attempts), d.error || "–", formatBytes(d.payload_bytes)]),
        { numeric: [2, 4] });
    host.replaceChildren(list, h("div", { className: "row" }, redrive,
      h("button", { type: "button", onclick: () => loadDeadLetters(name, host, signal) }, "Refresh")), output);
  } catch (error) {
    if (error.name === "AbortError") return;
    host.replaceChildren(errorBox(error));
  }
}

function logsPanel(name, signal) {
  const list = h("ol", { className: "logs", tabindex: "0", "aria-label": `Log lines of ${name}`, id: "log-lines" });
  const state = h("p", { className: "muted", role: "status" }, "Not following.");
  let follow = null;
  let count = 0;
  const toggle = h("button", { type: "button", "aria-pressed": "false", onclick: () => (follow ? stop() : start()) }, "Follow live");

  function add(line) {
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(h("li", { className: line.stream },
      h("span", { className: "ts" }, `${line.ts} `),
      h("span", { className: "msg" }, line.message)));
    while (list.childElementCount > LOG_LINES_MAX) list.firstElementChild.remove();
    count += 1;
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function stop(message) {
    if (follow) follow.abort();
    follow = null;
    toggle.setAttribute("aria-pressed", "false");
    toggle.textContent = "Follow live";
    state.textContent = message || `Paused; ${count} lines shown.`;
  }

  function start() {
    follow = new AbortController();
    const mine = follow;
    signal.addEventListener("abort", () => mine.abort(), { once: true });
    list.replaceChildren();
    count = 0;
    toggle.setAttribute("aria-pressed", "true");
    toggle.textContent = "Pause";
    state.textContent = "Following the logs live.";
    streamNdjson(`/v1/functions/${seg(name)}/logs?tail=100&follow=true`, add, mine.signal)
      .then(() => {
        if (follow === mine) stop("The server ended the stream.");
      })
      .catch((error) => {
        if (error.name === "AbortError") return;
        if (follow === mine) stop();
        list.after(errorBox(error));
      });
  }

  return { element: h("div", {}, h("div", { className: "row" }, toggle), state, list), start };
}

