// The management API, as the console calls it: the same `/v1` endpoints and
// bearer keys as the CLI (docs/api.md). The key lives in sessionStorage, so
// it is gone when the tab closes and is never sent anywhere but this origin.

const KEY_STORAGE = "updraft.console.key";

/** An error answered by the API: its status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

/** What to do when the server refuses the key (revoked, or a new server). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

export function storeKey(key) {
  window.sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  try {
    window.sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage disabled: nothing was kept.
  }
}

/** The error of a failed response, from its JSON body when it has one. */
async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      const id = body.error.id ? ` (error id ${body.error.id})` : "";
      return new ApiError(response.status, body.error.code || "error", `${body.error.message || ""}${id}`);
    }
  } catch {
    // Not JSON: a function's own answer, or a proxy's.
  }
  const message = text.trim() || `${response.status} ${response.statusText}`;
  return new ApiError(response.status, "http_" + response.status, message.slice(0, 500));
}

/**
 * Sends a request with the key (or `key`, when signing in). Resolves with
 * the response when it is a success; rejects with an ApiError otherwise.
 */
export async function request(method, path, { body, headers, signal, key, accept404 } = {}) {
  const bearer = key || storedKey();
  const sent = new Headers(headers || {});
  if (bearer) sent.set("Authorization", `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body, signal, cache: "no-store", credentials: "omit" });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "network", `the server did not answer (${error.message}): is it running, and is this the right address?`);
  }
  if (response.ok || (accept404 && response.status === 404)) return response;
  const error = await errorOf(response);
  if (response.status === 401 && !key) unauthorized(error);
  throw error;
}

export async function getJson(path, options) {
  const response = await request("GET", path, options);
  return response.json();
}

export async function postJson(path, value, options = {}) {
  const headers = { "Content-Type": "application/json" };
  const body = value === undefined ? undefined : JSON.stringify(value);
  const response = await request("POST", path, { ...options, headers, body });
  return response.json();
}

/** NDJSON lines of a whole (not streamed) response. */
export async function getNdjson(path, options) {
  const response = await request("GET", path, options);
  const text = await response.text();
  const rows = [];
  for (const line of text.split("\n")) {
    if (line.trim()) rows.push(JSON.parse(line));
  }
  return { rows, next: response.headers.get("Updraft-Next-Cursor") };
}

/**
 * Follows an NDJSON stream (`logs?follow=true`), calling `onLine` with each
 * parsed line until `signal` aborts or the server ends it.
 */
export async function streamNdjson(path, onLine, signal) {
  const response = await request("GET", path, { signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline = buffered.indexOf("\n");
    while (newline >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      if (line.trim()) onLine(JSON.parse(line));
      newline = buffered.indexOf("\n");
    }
  }
}

/** A path segment, escaped. */
export function seg(text) {
  return encodeURIComponent(text);
}

/** Runs `tasks` (functions returning promises) at most `limit` at a time. */
export async function limited(tasks, limit) {
  const results = new Array(tasks.length);
  let next = 0;
  async function worker() {
    while (next < tasks.length) {
      const i = next;
      next += 1;
      results[i] = await tasks[i]();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
