// Building the page from data. Text always goes in as text nodes, never as
// markup: names, log lines and stored values come from users and functions.
// (The Content-Security-Policy also forbids HTML sinks via Trusted Types.)

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name === "text") {
      element.textContent = String(value);
    } else {
      element.setAttribute(name === "className" ? "class" : name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: `h("button", {type: "button", onclick}, "Save")`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same shape as `h`. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

let ids = 0;
/** A fresh id for label/aria wiring. */
export function uid(prefix) {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A titled section: landmark-named by its heading. */
export function section(title, ...children) {
  const id = uid("section");
  return h("section", { className: "panel", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/** A table in a box that scrolls sideways on a narrow screen, reachable by keyboard. */
export function table(caption, headers, rows, { numeric = [] } = {}) {
  const head = h("tr", {}, headers.map((name, i) =>
    h("th", { scope: "col", className: numeric.includes(i) ? "num" : undefined }, name)));
  const body = rows.map((cells) => h("tr", {}, cells.map((cell, i) =>
    h("td", { className: numeric.includes(i) ? "num" : undefined }, cell))));
  const id = uid("table");
  return h("div", { className: "table-wrap", role: "region", "aria-labelledby": id, tabindex: "0" },
    h("table", {}, h("caption", { id }, caption), h("thead", {}, head), h("tbody", {}, body)));
}

/** A labelled form field. */
export function field(labelText, control, hint) {
  const id = control.id || uid("field");
  control.id = id;
  let hintNode = null;
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    hintNode = h("p", { className: "hint", id: hintId }, hint);
  }
  return h("div", { className: "field" }, h("label", { for: id }, labelText), control, hintNode);
}

/** A definition list of facts, skipping empty values. */
export function facts(pairs, className = "facts") {
  const items = [];
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    // Each pair in a div (valid in a dl), so a grid can lay pairs out.
    items.push(h("div", {}, h("dt", {}, term), h("dd", {}, value)));
  }
  return h("dl", { className }, items);
}

/** Shows an error the API gave, with its message (which says what to fix). */
export function errorBox(error) {
  const code = error && error.code ? ` (${error.code})` : "";
  return h("div", { className: "error", role: "alert" },
    h("strong", {}, `Error${code}: `), error && error.message ? error.message : String(error));
}

/** Says something to screen readers without moving focus. */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  // Cleared first so the same message twice is read twice.
  region.textContent = "";
  window.setTimeout(() => { region.textContent = text; }, 50);
}

export function formatNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${formatNumber(value, unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatCents(cents) {
  if (cents === null || cents === undefined) return "–";
  return `$${(cents / 100).toFixed(2)}`;
}

/** Dollars, with enough digits that tiny costs do not all read $0.00. */
export function formatUsd(usd) {
  if (usd === null || usd === undefined || Number.isNaN(usd)) return "–";
  if (usd === 0) return "$0";
  if (usd < 0.01) return `$${usd.toPrecision(2)}`;
  return `$${usd.toFixed(2)}`;
}

export function formatTime(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function formatAge(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  const secs = Math.round(ms / 1000);
  if (secs < 120) return `${secs} s`;
  const mins = Math.round(secs / 60);
  if (mins < 120) return `${mins} min`;
  return `${Math.round(mins / 60)} h`;
}
