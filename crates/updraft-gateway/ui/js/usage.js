// Usage and cost: invocations and cost per hour (the last 24) or per day
// (the last 14), for all functions or one, from `GET /v1/usage` (one call
// per bucket, each over the hourly sums the server keeps); the month's
// budget as a gauge (`/v1/budget`) and its bill (`/v1/bill`).

import { getJson, limited, seg } from "./api.js";
import { barChart, gauge } from "./chart.js";
import {
  errorBox, field, formatCents, formatNumber, formatUsd, h, section, table,
} from "./dom.js";

const HOUR_MS = 3600 * 1000;
const DAY_MS = 24 * HOUR_MS;
const PERIODS = {
  hour: { count: 24, step: HOUR_MS, unit: "hour", label: "Per hour, the last 24 hours" },
  day: { count: 14, step: DAY_MS, unit: "day", label: "Per day, the last 14 days" },
};
/** Bucket requests in flight at once: the browser's own limit per host is 6. */
const PARALLEL = 4;
/** A GiB, and a GB-month as the bill counts it (730 hours). */
const GIB = 1024 ** 3;
const HOURS_PER_MONTH = 730;

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");

/**
 * What `sums` cost at `prices`, in dollars, unrounded: the bill's lines
 * (docs/usage.md) before each is rounded to the cent, so a few test calls
 * still show as more than $0.00. The bill itself stays the authority.
 */
export function costUsd(sums, prices) {
  if (!sums || !prices) return 0;
  const perMillion = (n, price) => ((n || 0) * (price || 0)) / 1e6;
  return perMillion(sums.invocations, prices.requests_per_million)
    + ((sums.mb_ms || 0) / 1024000) * (prices.gb_second || 0)
    + perMillion(sums.kv_ops, prices.kv_ops_per_million)
    + perMillion(sums.blob_ops, prices.blob_ops_per_million)
    + (((sums.bytes_out || 0) + (sums.outbound_bytes || 0)) / GIB) * (prices.gb_out || 0)
    + perMillion(sums.outbound_requests, prices.outbound_requests_per_million)
    + ((sums.kv_byte_hours || 0) / (GIB * HOURS_PER_MONTH)) * (prices.kv_gb_month || 0)
    + ((sums.blob_byte_hours || 0) / (GIB * HOURS_PER_MONTH)) * (prices.blob_gb_month || 0);
}

function bucketStarts(period, now) {
  const { count, step } = PERIODS[period];
  const last = now - (now % step);
  return Array.from({ length: count }, (_, i) => last - (count - 1 - i) * step);
}

function shortLabel(period, start) {
  const d = new Date(start);
  return period === "hour" ? `${String(d.getUTCHours()).padStart(2, "0")}h` : `${d.getUTCMonth() + 1}/${d.getUTCDate()}`;
}

function longLabel(period, start) {
  return period === "hour" ? `${iso(start).slice(0, 13)}:00Z` : iso(start).slice(0, 10);
}

export async function usageView(main, params, { signal }) {
  const chosen = params.function || "";
  main.append(h("h1", {}, chosen ? `Usage and cost of ${chosen}` : "Usage and cost"));

  const budgetHost = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const billHost = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const period = h("select", { name: "period" },
    Object.entries(PERIODS).map(([value, p]) => h("option", { value }, p.label)));
  const fn = h("select", { name: "function" }, h("option", { value: "" }, "All functions"));
  const chartsHost = h("div", { id: "usage-charts" });
  const chartsStatus = h("div", { "aria-live": "polite" });
  const callsHost = h("div");
  const costHost = h("div");
  const byFunction = h("div");
  const controls = h("form", {
    className: "inline-form",
    onsubmit: (event) => {
      event.preventDefault();
      draw();
    },
  }, field("Period", period), field("Function", fn), h("button", { type: "submit" }, "Show"));
  chartsHost.append(callsHost, costHost);
  main.append(
    section("Invocations and cost", controls, chartsStatus, chartsHost, byFunction),
    h("div", { className: "grid two" }, section("Budget this month", budgetHost), section("Bill this month", billHost)),
  );
  // A new period needs new numbers; a new function only a new drawing.
  period.addEventListener("change", () => draw());
  fn.addEventListener("change", () => render());

  const [prices, functions] = await Promise.all([
    getJson("/v1/prices", { signal }).catch(() => null),
    getJson("/v1/functions", { signal }).then((l) => l.functions || []).catch(() => []),
  ]);
  const names = new Set(functions.map((f) => f.name));
  if (chosen) names.add(chosen);
  for (const name of [...names].sort()) fn.append(h("option", { value: name }, name));
  fn.value = chosen;

  loadBudget(budgetHost, signal);
  loadBill(billHost, signal);

  let last = null;
  async function draw() {
    const status = chartsStatus;
    const which = period.value;
    const now = Date.now();
    const starts = bucketStarts(which, now);
    const { step, unit } = PERIODS[which];
    status.replaceChildren(h("p", { className: "muted" }, "Loading…"));
    try {
      const answers = await limited(starts.map((start) => () =>
        getJson(`/v1/usage?group_by=function&from=${iso(start)}&to=${iso(start + step)}`, { signal })), PARALLEL);
      const whole = await getJson(`/v1/usage?group_by=function&from=${iso(starts[0])}&to=${iso(starts[starts.length - 1] + step)}`, { signal });
      last = { which, starts, answers, whole, unit };
      render();
      status.replaceChildren();
    } catch (error) {
      if (error.name === "AbortError") return;
      status.replaceChildren(errorBox(error));
    }
  }

  function render() {
    if (!last) return;
    const { which, starts, answers, whole, unit } = last;
    const selected = fn.value;
    const pick = (answer) => {
      if (!selected) return answer.total || {};
      const row = (answer.rows || []).find((r) => r.key === selected);
      return row || {};
    };
    const calls = starts.map((start, i) => ({
      label: longLabel(which, start), short: shortLabel(which, start), value: pick(answers[i]).invocations || 0,
    }));
    const cost = starts.map((start, i) => ({
      label: longLabel(which, start), short: shortLabel(which, start), value: costUsd(pick(answers[i]), prices),
    }));
    const who = selected || "all functions";
    barChart(callsHost, { title: `Invocations of ${who}, per ${unit}`, buckets: calls, unit, format: (v) => formatNumber(v, 1) });
    callsHost.firstElementChild.id = "chart-invocations";
    barChart(costHost, { title: `Cost of ${who}, per ${unit} (USD, from the price sheet)`, buckets: cost, unit, format: formatUsd, alt: true });
    costHost.firstElementChild.id = "chart-cost";
    const rows = (whole.rows || []).filter((r) => !selected || r.key === selected);
    byFunction.replaceChildren(rows.length === 0
      ? h("p", {}, "No usage in this period.")
      : table(`By function, ${PERIODS[which].label.toLowerCase()}`,
        ["Function", "Invocations", "Errors", "Billed", "GB-seconds", "Cost", "Billed cost"],
        rows.map((r) => [
          r.key === "(storage)" ? "(storage)" : h("a", { href: `#/functions/${seg(r.key)}` }, r.key),
          formatNumber(r.invocations), formatNumber(r.failures), `${formatNumber(r.billed_ms)} ms`,
          formatNumber((r.mb_ms || 0) / 1024000, 3), formatUsd(costUsd(r, prices)), formatCents(r.cost_cents),
        ]), { numeric: [1, 2, 3, 4, 5, 6] }));
  }

  // Charts are drawn to their box's width: draw again when it changes.
  let resizeTimer = null;
  const onResize = () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(render, 150);
  };
  window.addEventListener("resize", onResize);
  signal.addEventListener("abort", () => window.removeEventListener("resize", onResize), { once: true });

  await draw();
}

async function loadBudget(host, signal) {
  try {
    const b = await getJson("/v1/budget", { signal });
    if (b.budget_cents === null || b.budget_cents === undefined) {
      host.replaceChildren(
        h("p", { id: "budget-none" }, `No monthly budget is set. ${formatCents(b.spent_cents)} spent in ${b.month}.`),
        h("p", { className: "muted" }, "Set one with ", h("code", {}, "updraft budget set 25"), ": past it, invocations are refused."));
      return;
    }
    const fraction = b.budget_cents > 0 ? b.spent_cents / b.budget_cents : 1;
    const label = `${formatCents(b.spent_cents)} of the ${formatCents(b.budget_cents)} budget for ${b.month} spent (${Math.round(fraction * 100)}%)`;
    const parts = [gauge({ fraction, label, text: `${Math.round(fraction * 100)}%` }), h("p", {}, `${label}.`)];
    if (b.exceeded) {
      parts.push(h("p", { className: "error", role: "alert" },
        "The budget is spent: new invocations are refused (402) until it is raised or the month ends."));
    } else if (b.warned) {
      parts.push(h("p", { className: "notice" }, "Over 80% of the budget is spent."));
    }
    host.replaceChildren(...parts);
  } catch (error) {
    if (error.name === "AbortError") return;
    host.replaceChildren(errorBox(error));
  }
}

async function loadBill(host, signal) {
  try {
    const bill = await getJson("/v1/bill", { signal });
    const lines = bill.lines || [];
    host.replaceChildren(
      table(`Bill for ${bill.month}`, ["Item", "Quantity", "Unit price", "Amount"],
        lines.map((l) => [l.item, l.quantity, `$${l.unit_price_usd} ${l.unit}`, formatCents(l.amount_cents)])
          .concat([[h("strong", {}, "Total"), "", "", h("strong", { id: "bill-total" }, formatCents(bill.total_cents))]]),
        { numeric: [3] }),
      h("p", { className: "muted" }, "Each line is rounded to the cent; the charts show the unrounded cost."));
  } catch (error) {
    if (error.name === "AbortError") return;
    host.replaceChildren(errorBox(error));
  }
}
