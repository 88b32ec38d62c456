// Browsing state: the key-value stores and blob containers that deployed
// functions list (`/v1/kv…`, `/v1/blobs…`), a page of keys at a time, a
// value or a blob shown as text when it is text. Read-only: the console
// writes no data of a function's.

import { getJson, request, seg } from "./api.js";
import { announce, errorBox, facts, field, formatBytes, formatNumber, formatTime, h, section, table } from "./dom.js";

/** Keys or blobs listed per page. */
const PAGE = 100;
/** Largest blob previewed in the page; bigger ones are downloaded. */
const PREVIEW_BYTES_MAX = 256 * 1024;

export async function storageView(main, _params, { signal }) {
  main.append(h("h1", {}, "Key-value stores and blobs"));
  const kvHost = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  const blobHost = h("div", {}, h("p", { className: "muted" }, "Loading…"));
  main.append(h("div", { className: "grid two" }, section("Key-value stores", kvHost), section("Blob containers", blobHost)));
  const [kv, blobs] = await Promise.allSettled([getJson("/v1/kv", { signal }), getJson("/v1/blobs", { signal })]);
  const list = (settled, field, hrefOf, empty) => {
    if (settled.status === "rejected") return errorBox(settled.reason);
    const names = settled.value[field] || [];
    if (names.length === 0) return h("p", {}, empty);
    return h("ul", {}, names.map((name) => h("li", {}, h("a", { href: hrefOf(name) }, name))));
  };
  kvHost.replaceChildren(list(kv, "stores", (n) => `#/storage/kv/${seg(n)}`,
    "No stores: a function lists the ones it uses in key_value_stores."));
  blobHost.replaceChildren(list(blobs, "containers", (n) => `#/storage/blobs/${seg(n)}`,
    "No containers: a function lists the ones it uses in blob_containers."));
}

/** Bytes as text when they are UTF-8, else a hex dump of the start. */
function showBytes(bytes) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    let shown = text;
    try {
      shown = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Not JSON: shown as it is.
    }
    return h("pre", { className: "output", tabindex: "0", "aria-label": "Value" }, shown || "(empty)");
  } catch {
    const head = Array.from(bytes.slice(0, 256), (b) => b.toString(16).padStart(2, "0")).join(" ");
    return h("div", {}, h("p", {}, `Binary, ${formatBytes(bytes.length)}; the first ${Math.min(256, bytes.length)} bytes in hex:`),
      h("pre", { className: "output", tabindex: "0", "aria-label": "Value in hex" }, head));
  }
}

/** A paged, prefix-filtered listing with a detail area. */
function browser(main, { title, listTitle, signal, listPath, rowsOf, headers, numeric }) {
  const prefix = h("input", { type: "text", name: "prefix", spellcheck: "false", autocomplete: "off" });
  const listHost = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true }, "Next page");
  const detail = h("div", { "aria-live": "polite", id: "detail" });
  let cursor = null;
  let shown = [];

  async function load(reset) {
    if (reset) {
      cursor = null;
      shown = [];
    }
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (prefix.value) query.set("prefix", prefix.value);
    if (cursor) query.set("cursor", cursor);
    try {
      const page = await getJson(`${listPath}?${query}`, { signal });
      const { rows, next } = rowsOf(page);
      shown = shown.concat(rows);
      cursor = next;
      more.hidden = !cursor;
      listHost.replaceChildren(shown.length === 0
        ? h("p", {}, prefix.value ? "Nothing under this prefix." : "Empty.")
        : table(`${shown.length}${cursor ? "+" : ""} shown`, headers, shown, { numeric }));
      announce(`${shown.length} shown`);
    } catch (error) {
      if (error.name === "AbortError") return;
      listHost.replaceChildren(errorBox(error));
    }
  }
  more.addEventListener("click", () => load(false));
  const form = h("form", {
    className: "inline-form",
    onsubmit: (event) => {
      event.preventDefault();
      load(true);
    },
  }, field("Key prefix", prefix), h("button", { type: "submit" }, "Filter"));
  main.append(
    h("p", {}, h("a", { href: "#/storage" }, "← All stores and containers")),
    h("h1", {}, title),
    h("div", { className: "grid two" }, section(listTitle, form, listHost, more), section("Selected", detail)),
  );
  return { load, detail };
}

export async function kvView(main, { store }, { signal }) {
  const base = `/v1/kv/${seg(store)}`;
  let ui;
  const open = async (key) => {
    ui.detail.replaceChildren(h("p", { className: "muted" }, "Loading…"));
    try {
      const response = await request("GET", `${base}/${seg(key)}`, { signal });
      const bytes = new Uint8Array(await response.arrayBuffer());
      ui.detail.replaceChildren(facts([["Key", h("span", { className: "mono" }, key)], ["Size", formatBytes(bytes.length)]]), showBytes(bytes));
    } catch (error) {
      if (error.name === "AbortError") return;
      ui.detail.replaceChildren(errorBox(error));
    }
  };
  ui = browser(main, {
    title: `Store ${store}`, listTitle: "Keys", signal, listPath: base, headers: ["Key"], numeric: [],
    rowsOf: (page) => ({
      rows: (page.keys || []).map((key) => [h("button", { type: "button", className: "link", onclick: () => open(key) }, key)]),
      next: page.cursor,
    }),
  });
  ui.detail.append(h("p", { className: "muted" }, "Choose a key to see its value."));
  await ui.load(true);
}

export async function blobsView(main, { container }, { signal }) {
  const base = `/v1/blobs/${seg(container)}`;
  let ui;
  const fetchBlob = async (key) => {
    const response = await request("GET", `${base}/${seg(key)}`, { signal });
    return response.blob();
  };
  const download = async (key) => {
    try {
      const blob = await fetchBlob(key);
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: key.split("/").pop() || "blob" });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (error) {
      if (error.name === "AbortError") return;
      ui.detail.replaceChildren(errorBox(error));
    }
  };
  const open = async (blob) => {
    const about = facts([["Key", h("span", { className: "mono" }, blob.key)], ["Size", formatBytes(blob.size)],
      ["Modified", formatTime(blob.modified_ms)]]);
    const get = h("button", { type: "button", onclick: () => download(blob.key) }, "Download");
    if (blob.size > PREVIEW_BYTES_MAX) {
      ui.detail.replaceChildren(about, h("p", {}, `Too large to show here (over ${formatBytes(PREVIEW_BYTES_MAX)}).`), get);
      return;
    }
    ui.detail.replaceChildren(about, h("p", { className: "muted" }, "Loading…"));
    try {
      const bytes = new Uint8Array(await (await fetchBlob(blob.key)).arrayBuffer());
      ui.detail.replaceChildren(about, showBytes(bytes), get);
    } catch (error) {
      if (error.name === "AbortError") return;
      ui.detail.replaceChildren(about, errorBox(error));
    }
  };
  ui = browser(main, {
    title: `Container ${container}`, listTitle: "Blobs", signal, listPath: base, headers: ["Key", "Size", "Modified"], numeric: [1],
    rowsOf: (page) => ({
      rows: (page.blobs || []).map((b) => [
        h("button", { type: "button", className: "link", onclick: () => open(b) }, b.key),
        formatBytes(b.size), formatTime(b.modified_ms)]),
      next: page.cursor,
    }),
  });
  ui.detail.append(h("p", { className: "muted" }, `Choose a blob to see it. Blobs up to ${formatNumber(PREVIEW_BYTES_MAX / 1024)} KiB are shown here.`));
  await ui.load(true);
}
