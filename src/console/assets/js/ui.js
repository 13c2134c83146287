// Small DOM helpers shared by the screens. No inline styles or scripts anywhere: the
// console's CSP (API.md §10) allows only its own files.

/**
 * Builds an element. `attrs`: `class`, `testid` (data-testid), `on<event>` handlers
 * (`onclick`), `text`, DOM properties (`value`, `disabled`, `checked`, `hidden`), anything
 * else as an attribute. Children: nodes, strings, or arrays of them; null/false skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" || k === "disabled" || k === "checked" || k === "hidden" || k === "selected")
      el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A fresh id for label/control pairs. */
export const uid = (p = "c") => `${p}-${++ids}`;

/** A labelled control: `<label for=id>text</label>` followed by the control. */
export function field(label, control, hint) {
  if (!control.id) control.id = uid("f");
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control,
    hint ? h("small", { class: "hint", text: hint }) : null);
}

export const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : String(n ?? ""));

/**
 * Where an action's error shows: role=alert, the API's Code and Message (and CodeN,
 * RequestId when there is one).
 */
export function errorBox(testid) {
  const el = h("div", { class: "error", role: "alert", testid, hidden: true });
  return Object.assign(el, {
    show(err) {
      const code = err && err.code ? err.code : "Error";
      const parts = [h("strong", { class: "code", text: code })];
      if (err && err.codeN) parts.push(h("span", { class: "coden", text: ` ${err.codeN}` }));
      parts.push(": ", err && err.message ? err.message : String(err));
      if (err && err.requestId) parts.push(h("small", { class: "rid", text: ` RequestId ${err.requestId}` }));
      put(el, parts);
      el.hidden = false;
    },
    clear() {
      el.hidden = true;
      el.replaceChildren();
    },
  });
}

/**
 * Runs `work` with `button` marked busy (disabled, aria-busy) and shows a failure in
 * `errors`. Resolves to work's value, or undefined when it failed.
 */
export async function busy(button, errors, work) {
  const was = button ? button.disabled : false;
  if (button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  }
  errors?.clear();
  try {
    return await work();
  } catch (e) {
    if (e && e.name === "AbortError") return undefined;
    if (errors) errors.show(e);
    else console.warn(e);
    return undefined;
  } finally {
    if (button) {
      button.disabled = was;
      button.removeAttribute("aria-busy");
    }
  }
}

/**
 * An in-page confirm step (never window.confirm): shows `message` and two buttons inside
 * `where`; resolves true on confirm, false on cancel. The confirm button gets `testid`
 * and the focus.
 */
export function confirmStep(where, message, { testid, yes = "Confirm", danger = false } = {}) {
  return new Promise((resolve) => {
    const done = (v) => {
      box.remove();
      resolve(v);
    };
    const ok = h("button", { type: "button", class: danger ? "danger" : "primary", testid, onclick: () => done(true) }, yes);
    const no = h("button", { type: "button", onclick: () => done(false) }, "Cancel");
    const box = h("div", { class: "confirm", role: "group", "aria-label": "Confirm" },
      h("div", { class: "confirm-message" }, message), h("div", { class: "row" }, ok, no));
    box.addEventListener("keydown", (e) => {
      if (e.key === "Escape") done(false);
    });
    where.querySelector(":scope > .confirm")?.remove();
    where.append(box);
    ok.focus();
  });
}

/** A note shown instead of working controls when the key's role is read. */
export function readNote(ctx, what) {
  return ctx.canWrite
    ? null
    : h("p", { class: "note", testid: "read-only-note", role: "note" },
        `This key's role is read: ${what} needs an admin key.`);
}

/** A loading line for a region being fetched. */
export const loading = (text = "Loading…") => h("p", { class: "loading", role: "status", text });

// ---- Shared by the Users and Events screens ----

const INT64_MAX = 9223372036854775807n;

/** An error shown like the API's (errorBox reads `code` and `message`). */
export function inputError(message, code = "InvalidParam") {
  return Object.assign(new Error(message), { code });
}

/**
 * A UserId typed by the operator (API.md §4: a positive signed 64-bit integer), checked
 * without going through a float. Returns `{ text, json }`: `text` the canonical decimal,
 * `json` what to put in a body for `api.call` (a Number up to 2^53 - 1; above that a
 * `JSON.rawJSON` so JSON.stringify writes the exact digits, where the browser has it).
 * Throws an `inputError` with a clear message otherwise.
 */
export function userIdFromText(raw) {
  const t = String(raw ?? "").trim();
  if (t === "") throw inputError("enter a UserId (a positive whole number)", "MissingParameter");
  if (!/^[0-9]+$/.test(t)) throw inputError(`UserId must be a positive whole number (digits only), got "${t.slice(0, 40)}"`);
  const n = BigInt(t);
  if (n < 1n || n > INT64_MAX) throw inputError(`UserId must be between 1 and ${INT64_MAX}, got ${t.length > 40 ? t.slice(0, 40) + "…" : t}`);
  const text = n.toString();
  if (n <= BigInt(Number.MAX_SAFE_INTEGER)) return { text, json: Number(text) };
  if (typeof JSON.rawJSON === "function") return { text, json: JSON.rawJSON(text) };
  throw inputError(
    `UserId ${text} is above ${Number.MAX_SAFE_INTEGER}, the largest id this browser can send exactly; use tagcast call for it`);
}

/** Resolves after `ms`, or rejects with an AbortError when `signal` aborts first. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new DOMException("aborted", "AbortError"));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new DOMException("aborted", "AbortError"));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A `<time>` for a millisecond timestamp: UTC, to the second (milliseconds in the title). */
export function timeEl(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms <= 0) return h("span", { class: "muted", text: "—" });
  const d = new Date(ms);
  const iso = d.toISOString();
  return h("time", { datetime: iso, title: `${iso} (${ms} ms)`, text: iso.replace("T", " ").replace(/\.\d{3}Z$/, "Z") });
}
