// The console's shell: sign-in, the header, and a hash router that shows
// one view at a time in <main>. Views live in their own modules; each gets
// the main element and the route's parameters, and returns a function
// that stops what it started (log streams, timers) when the view is left.

import { ApiError, forgetKey, getJson, onUnauthorized, storeKey, storedKey } from "./api.js";
import { announce, errorBox, field, h } from "./dom.js";
import { functionsView, functionView } from "./functions.js";
import { eventsView } from "./events.js";
import { storageView, kvView, blobsView } from "./storage.js";
import { usageView } from "./usage.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const whoTenant = document.getElementById("who-tenant");

/** Who the key belongs to, learned at sign-in: {tenant, admin}. */
const session = { tenant: null, admin: false };

/** Routes: a pattern of path segments (":x" captures) and its view. */
const ROUTES = [
  { path: ["functions"], section: "functions", view: functionsView },
  { path: ["functions", ":name"], section: "functions", view: functionView },
  { path: ["events"], section: "events", view: eventsView },
  { path: ["storage"], section: "storage", view: storageView },
  { path: ["storage", "kv", ":store"], section: "storage", view: kvView },
  { path: ["storage", "blobs", ":container"], section: "storage", view: blobsView },
  { path: ["usage"], section: "usage", view: usageView },
  { path: ["usage", ":function"], section: "usage", view: usageView },
];

let stopView = () => {};
let firstRender = true;

function match(segments) {
  for (const route of ROUTES) {
    if (route.path.length !== segments.length) continue;
    const params = {};
    const ok = route.path.every((part, i) => {
      if (part.startsWith(":")) {
        params[part.slice(1)] = segments[i];
        return true;
      }
      return part === segments[i];
    });
    if (ok) return { route, params };
  }
  return null;
}

/** The key's id: `upd_{id}_{secret}`. */
function keyId(key) {
  const found = /^upd_([^_]+)_/.exec(key);
  return found ? found[1] : null;
}

/**
 * Checks a key with the API (`GET /v1/keys` needs a valid one) and learns
 * its tenant from the key list, which holds the caller's own key.
 */
async function identify(key) {
  const listed = await getJson("/v1/keys", { key });
  const id = keyId(key);
  const mine = (listed.keys || []).find((k) => k.id === id);
  return mine ? { tenant: mine.tenant, admin: !!mine.admin } : { tenant: null, admin: false };
}

function showSignedIn() {
  const signedIn = !!storedKey();
  nav.hidden = !signedIn;
  who.hidden = !signedIn;
  whoTenant.textContent = session.tenant
    ? `Tenant ${session.tenant}${session.admin ? " (admin key)" : ""}`
    : "Signed in";
}

function signInView(message) {
  const input = h("input", {
    type: "password", name: "key", autocomplete: "off", spellcheck: "false",
    autocapitalize: "off", required: true, placeholder: "upd_…",
  });
  const errors = h("div");
  const button = h("button", { type: "submit", className: "primary" }, "Sign in");
  const form = h("form", {
    className: "panel", "aria-labelledby": "signin-title", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      errors.replaceChildren();
      if (!key) {
        errors.append(errorBox({ message: "enter an API key: it starts with upd_" }));
        input.focus();
        return;
      }
      button.disabled = true;
      try {
        const me = await identify(key);
        storeKey(key);
        Object.assign(session, me);
        showSignedIn();
        announce("Signed in");
        navigate("#/functions");
      } catch (error) {
        errors.append(errorBox(error));
        input.focus();
      } finally {
        button.disabled = false;
      }
    },
  },
  h("h1", { id: "signin-title", tabindex: "-1" }, "Sign in to Updraft"),
  message ? h("p", { className: "notice", role: "status" }, message) : null,
  field("API key", input,
    "The same key the CLI uses. A new server writes its admin key to DATA_DIR/admin.key; `updraft keys create` makes one per tenant. It is kept in this tab only, until you sign out or close it."),
  errors,
  h("div", { className: "row" }, button));
  main.replaceChildren(form);
  // On a first visit the focus stays at the top, where the skip link is
  // the first stop; after a sign-out or a refused key, the key is next.
  if (message) input.focus();
}

function signOut(message) {
  forgetKey();
  session.tenant = null;
  session.admin = false;
  stopView();
  stopView = () => {};
  showSignedIn();
  if (location.hash !== "#/signin") history.replaceState(null, "", "#/signin");
  signInView(message);
  announce(message || "Signed out");
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function render() {
  stopView();
  stopView = () => {};
  // Moving focus to the new page's heading tells a screen reader where it
  // is; not on the first load, where the browser's own focus is right.
  const moveFocus = !firstRender;
  firstRender = false;
  if (!storedKey()) {
    signInView();
    return;
  }
  const hash = location.hash || "#/functions";
  if (!hash.startsWith("#/") || hash === "#/signin") {
    navigate("#/functions");
    return;
  }
  const segments = hash.slice(2).split("/").filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  const found = match(segments);
  for (const link of nav.querySelectorAll("a")) {
    if (found && link.dataset.section === found.route.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!found) {
    main.replaceChildren(h("h1", { tabindex: "-1" }, "Not found"),
      h("p", {}, "The console has no page at this address. ", h("a", { href: "#/functions" }, "Go to the functions.")));
    return;
  }
  const controller = new AbortController();
  stopView = () => controller.abort();
  main.replaceChildren();
  // A view puts its heading up before it waits for anything, so the focus
  // moves at once, not when the data has come.
  const pending = found.route.view(main, found.params, { signal: controller.signal, session });
  const heading = main.querySelector("h1");
  if (heading && moveFocus) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
  try {
    await pending;
  } catch (error) {
    if (error && error.name === "AbortError") return;
    main.append(errorBox(error));
  }
}

onUnauthorized((error) => {
  signOut(`The server refused the key: ${error.message}`);
});

document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out. The key is forgotten in this tab."));

// The skip link moves focus without changing the hash (which is the route).
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", render);

async function start() {
  const key = storedKey();
  if (key) {
    try {
      Object.assign(session, await identify(key));
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        signOut(`The server refused the stored key: ${error.message}`);
        return;
      }
    }
  }
  showSignedIn();
  render();
}

start();
