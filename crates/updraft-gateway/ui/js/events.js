// Queues and topics (`GET /v1/queues`): every function's async queue with
// its dead letters (redrive from here), the named queues with their depth,
// and the topics with their subscribers. Refreshed every few seconds while
// shown.

import { getJson, postJson, seg } from "./api.js";
import { announce, errorBox, formatAge, formatNumber, h, section, table } from "./dom.js";

/** How often the depths are read again while the page is open. */
const REFRESH_MS = 5000;

export async function eventsView(main, _params, { signal }) {
  const asyncHost = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const queuesHost = h("div");
  const topicsHost = h("div");
  const updated = h("p", { className: "muted" });
  const auto = h("button", {
    type: "button", "aria-pressed": "true", id: "auto-refresh",
    onclick: () => {
      const on = auto.getAttribute("aria-pressed") !== "true";
      auto.setAttribute("aria-pressed", String(on));
      schedule();
    },
  }, "Auto-refresh");
  main.append(
    h("div", { className: "row spread" }, h("h1", {}, "Queues and topics"),
      h("div", { className: "row" }, auto, h("button", { type: "button", onclick: () => load(true) }, "Refresh"))),
    updated,
    section("Async invocations, per function", asyncHost),
    section("Queues", queuesHost),
    section("Topics", topicsHost),
  );

  let timer = null;
  function schedule() {
    window.clearTimeout(timer);
    if (!signal.aborted && auto.getAttribute("aria-pressed") === "true") {
      timer = window.setTimeout(() => load(false), REFRESH_MS);
    }
  }
  signal.addEventListener("abort", () => window.clearTimeout(timer), { once: true });

  async function redrive(button, name) {
    button.disabled = true;
    try {
      const moved = await postJson(`/v1/functions/${seg(name)}/dlq/redrive`, undefined, { signal });
      announce(`${moved.redriven} dead letters of ${name} queued again`);
      await load(false);
    } catch (error) {
      if (error.name === "AbortError") return;
      button.disabled = false;
      button.after(errorBox(error));
    }
  }

  async function load(announced) {
    try {
      const all = await getJson("/v1/queues", { signal });
      const functions = all.functions || [];
      asyncHost.replaceChildren(functions.length === 0
        ? h("p", {}, "No function has had an async invocation.")
        : table("Each function's queue of async calls", ["Function", "Depth", "In flight", "Oldest", "Dead letters", "Action"],
          functions.map((f) => [
            h("a", { href: `#/functions/${seg(f.function)}` }, f.function),
            formatNumber(f.depth), formatNumber(f.in_flight), formatAge(f.oldest_age_ms), formatNumber(f.dead_letters),
            f.dead_letters > 0
              ? h("button", { type: "button", "data-redrive": f.function, onclick: (e) => redrive(e.currentTarget, f.function) }, `Redrive ${f.function}`)
              : "–",
          ]), { numeric: [1, 2, 3, 4] }));
      const queues = all.queues || [];
      queuesHost.replaceChildren(queues.length === 0
        ? h("p", {}, "No queues. ", h("code", {}, "updraft queues create NAME"), " makes one.")
        : table("Named queues", ["Queue", "Depth", "In flight", "Oldest", "Visibility", "Batch", "Consumers"],
          queues.map((q) => [h("span", { "data-queue": q.name }, q.name), formatNumber(q.depth), formatNumber(q.in_flight), formatAge(q.oldest_age_ms),
            `${formatNumber(q.visibility_timeout_ms)} ms`, formatNumber(q.batch_size), (q.consumers || []).join(", ") || "none"]),
          { numeric: [1, 2, 3, 4, 5] }));
      const topics = all.topics || [];
      topicsHost.replaceChildren(topics.length === 0
        ? h("p", {}, "No topics. ", h("code", {}, "updraft topics create NAME"), " makes one.")
        : table("Topics", ["Topic", "Subscribers", "Created"],
          topics.map((t) => [t.name, (t.subscribers || []).join(", ") || "none", new Date(t.created_ms).toISOString()])));
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
      if (announced) announce("Queues refreshed");
    } catch (error) {
      if (error.name === "AbortError") return;
      asyncHost.replaceChildren(errorBox(error));
    }
    schedule();
  }
  await load(false);
}
