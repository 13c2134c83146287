// Screen: Events (API.md §9 ListEvents): the app's newest events, newest first, then
// followed with long polls. Survives server restarts (retries with back-off) and an
// expired cursor (410 EventCursorExpired: reloads the newest events).
import { h, put, field, errorBox, userIdFromText, sleep, timeEl } from "./ui.js";

const TYPES = [
  "user.registered",
  "user.updated",
  "user.tags_changed",
  "user.unregistered",
  "broadcast.sent",
  "broadcast.recalled",
];
const LATEST = 50;
const MAX_ROWS = 500;
const WAIT_MS = 20000;
const FOLLOW_LIMIT = 100;

/** Filters and the follow toggle, kept across re-mounts (app or inbox changed) for one key. */
let kept = { key: "", types: [], user: "", following: true };

const kv = (obj) => Object.entries(obj && typeof obj === "object" ? obj : {});
const show = (v) => (typeof v === "string" ? v : JSON.stringify(v));

function tagList(obj) {
  return kv(obj).map(([k, v]) => `${k}:${v}`).join(", ");
}

/** The change an event describes, compactly, as text pieces. */
function change(e) {
  const parts = [];
  const add = (label, text, cls) => {
    if (text === "" || text === undefined) return;
    parts.push(h("span", { class: `chg ${cls || ""}` }, h("span", { class: "chg-label", text: `${label} ` }), h("code", { text })));
  };
  switch (e.Type) {
    case "user.registered": {
      const profile = [];
      if (e.NickName) profile.push(`NickName=${show(e.NickName)}`);
      if (e.Portrait) profile.push(`Portrait=${show(e.Portrait)}`);
      if (kv(e.Ext).length) profile.push(`Ext=${JSON.stringify(e.Ext)}`);
      if (e.IsRobot) profile.push("IsRobot=true");
      add("profile", profile.join(", "));
      add("tags", tagList(e.Tags), "set");
      if (!parts.length) parts.push(h("span", { class: "muted", text: "empty profile, no tags" }));
      break;
    }
    case "user.updated": {
      const prev = e.Previous || {};
      add("changed", kv(e.Changed).map(([k, v]) =>
        `${k}: ${k in prev ? show(prev[k]) : "∅"} → ${show(v)}`).join("; "), "set");
      break;
    }
    case "user.tags_changed": {
      const prev = e.Previous || {};
      add("inbox", String(e.InboxType ?? 0));
      add("set", kv(e.Set).map(([k, v]) =>
        (k in prev ? `${k}:${v} (was ${prev[k]})` : `${k}:${v}`)).join(", "), "set");
      add("deleted", (Array.isArray(e.Deleted) ? e.Deleted : []).map((k) =>
        (k in prev ? `${k} (was ${prev[k]})` : k)).join(", "), "del");
      break;
    }
    case "user.unregistered":
      parts.push(h("span", { class: "muted", text: "profile and tags removed" }));
      break;
    case "broadcast.sent": {
      add("broadcast", String(e.BroadcastId ?? ""));
      add("inbox", String(e.InboxType ?? 0));
      add("audience", String(e.AudienceCount ?? ""));
      if (e.Filter !== null && e.Filter !== undefined) add("filter", JSON.stringify(e.Filter));
      else if (Array.isArray(e.Tags)) add("tags", `${JSON.stringify(e.Tags)} TagOp ${e.TagOp ?? 0}`);
      else add("to", "everyone");
      if (e.ExpireTime) add("expires", new Date(e.ExpireTime).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z"));
      break;
    }
    case "broadcast.recalled":
      add("broadcast", String(e.BroadcastId ?? ""));
      break;
    default:
      add("raw", JSON.stringify(e));
  }
  return parts.flatMap((p, i) => (i ? [" ", p] : [p]));
}

/**
 * The UserId of an event. JSON numbers above 2^53 lose precision when the browser parses
 * the answer, so such an id is marked approximate rather than shown as if exact.
 */
function userCell(id) {
  if (id === undefined || id === null) return h("span", { class: "muted", text: "—" });
  if (typeof id === "number" && !Number.isSafeInteger(id)) {
    return h("span", { title: "above 2^53: the browser reads this id inexactly; look it up by the exact id" },
      `≈${BigInt(id).toString()}`);
  }
  return String(id);
}

function row(e) {
  return h("tr", { testid: "event-row", "data-seq": e.Seq, "data-type": e.Type },
    h("td", { class: "num mono", text: e.Seq }),
    h("td", {}, timeEl(e.Time)),
    h("td", { testid: "event-row-type" }, h("code", { text: e.Type })),
    h("td", { class: "mono", testid: "event-row-user" }, userCell(e.UserId)),
    h("td", { class: "event-who" },
      e.AccessKey ? h("code", { text: e.AccessKey }) : h("span", { class: "muted", text: "import" }),
      h("br", {}),
      h("small", { class: "mono rid", text: e.RequestId || "" })),
    h("td", { class: "change", testid: "event-row-change" }, change(e)));
}

export default {
  id: "events",
  title: "Events",
  mount(root, ctx) {
    if (kept.key !== ctx.api.accessKey) kept = { key: ctx.api.accessKey, types: [], user: "", following: true };
    const appId = ctx.appId();
    let loop = null; // the AbortController of the running read/follow loop
    let nextAfter = null; // the cursor to follow from (null: read the latest first)
    const seen = new Set();

    // Filters.
    const types = h("select", { testid: "event-types", multiple: true, size: String(TYPES.length) },
      TYPES.map((t) => h("option", { value: t, text: t, selected: kept.types.includes(t) })));
    const user = h("input", {
      testid: "event-user", inputmode: "numeric", autocomplete: "off", spellcheck: "false",
      placeholder: "all users", value: kept.user,
    });
    const apply = h("button", { type: "submit", testid: "event-apply" }, "Apply");
    const clear = h("button", { type: "button", testid: "event-clear" }, "Clear filters");
    const filters = h("form", { class: "panel event-filters", "aria-label": "Event filters", novalidate: true },
      h("div", { class: "row" },
        field("Types", types, "None chosen: every type. Ctrl/⌘-click to choose several."),
        field("UserId", user, "Empty: every user."),
        apply, clear));

    // Status, follow toggle, errors.
    const status = h("span", { class: "follow-status", testid: "event-status", role: "status" });
    const toggle = h("button", { type: "button", testid: "event-follow" });
    const errors = errorBox("event-error");
    const notice = h("p", { class: "note", testid: "event-notice", role: "status", hidden: true });

    // The list.
    const tbody = h("tbody", {});
    const empty = h("p", { class: "empty", testid: "event-empty", text: "No events yet.", hidden: true });
    const list = h("div", { class: "scroll", testid: "event-list" },
      h("table", { class: "events" },
        h("caption", { class: "sr-only", text: `Events of app ${appId}, newest first` }),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num", text: "Seq" }),
          h("th", { scope: "col", text: "Time (UTC)" }),
          h("th", { scope: "col", text: "Type" }),
          h("th", { scope: "col", text: "UserId" }),
          h("th", { scope: "col", text: "Who (AccessKey, RequestId)" }),
          h("th", { scope: "col", text: "Change" }))),
        tbody),
      empty);

    root.append(filters, h("div", { class: "row follow-bar" }, status, toggle), errors, notice, list);

    const setStatus = (text) => {
      if (status.textContent !== text) status.textContent = text;
    };
    const paintToggle = () => {
      toggle.textContent = kept.following ? "Pause" : "Resume";
      toggle.setAttribute("aria-label", kept.following ? "Pause following new events" : "Resume following new events");
    };
    paintToggle();

    function trim() {
      while (tbody.rows.length > MAX_ROWS) {
        const last = tbody.lastElementChild;
        seen.delete(last.dataset.seq);
        last.remove();
      }
      empty.hidden = tbody.rows.length > 0;
    }

    function replaceAll(events) {
      seen.clear();
      const rows = [];
      for (const e of events) {
        if (seen.has(e.Seq)) continue;
        seen.add(e.Seq);
        rows.push(row(e));
      }
      put(tbody, rows);
      trim();
    }

    /** Events in commit order (oldest first): each goes on top. */
    function prepend(events) {
      for (const e of events) {
        if (seen.has(e.Seq)) continue;
        seen.add(e.Seq);
        tbody.prepend(row(e));
      }
      trim();
    }

    /** The filter part of a body, or throws an error to show. */
    function filterBody() {
      const body = {};
      const chosen = [...types.selectedOptions].map((o) => o.value);
      if (chosen.length) body.Types = chosen;
      if (user.value.trim() !== "") body.UserId = userIdFromText(user.value).json;
      return body;
    }

    /**
     * Reads the latest events when there is no cursor, then (when following) long-polls
     * after the cursor until aborted. Errors are shown and retried after 1 s, doubling to
     * 10 s; an expired cursor reloads the latest.
     */
    async function run(signal, fb) {
      let delay = 1000;
      while (!signal.aborted) {
        try {
          if (nextAfter === null) {
            setStatus("Loading the latest events…");
            const r = await ctx.api.call("ListEvents",
              { AppId: appId, Latest: true, Limit: LATEST, ...fb }, { signal });
            if (signal.aborted) return;
            replaceAll(r.Events || []);
            nextAfter = r.NextAfter ?? null;
            if (nextAfter === null) throw Object.assign(new Error("ListEvents answered without NextAfter"), { code: "BadAnswer" });
          } else {
            if (!kept.following) {
              setStatus("Paused");
              return;
            }
            setStatus("Following: waiting for new events");
            const r = await ctx.api.call("ListEvents",
              { AppId: appId, After: nextAfter, WaitMs: WAIT_MS, Limit: FOLLOW_LIMIT, ...fb }, { signal });
            if (signal.aborted) return;
            prepend(r.Events || []);
            if (r.NextAfter !== undefined && r.NextAfter !== null) nextAfter = r.NextAfter;
          }
          errors.clear();
          delay = 1000;
          if (!kept.following) setStatus("Paused");
        } catch (e) {
          if (signal.aborted || (e && e.name === "AbortError")) return;
          errors.show(e);
          if (e && e.code === "EventCursorExpired") {
            // Events after the cursor were trimmed: show the newest again and go on from there.
            notice.textContent =
              "Events after the last one shown were trimmed by retention before they were read: the newest events were read again.";
            notice.hidden = false;
            nextAfter = null;
            continue;
          }
          setStatus(`Error; retrying in ${Math.round(delay / 1000)} s`);
          try {
            await sleep(delay, signal);
          } catch {
            return;
          }
          delay = Math.min(delay * 2, 10000);
        }
      }
    }

    /** Stops the running loop and starts another (fresh: from the latest events). */
    function restart(fresh) {
      if (loop) loop.abort();
      let fb;
      try {
        fb = filterBody();
      } catch (e) {
        loop = null;
        errors.show(e);
        setStatus(kept.following ? "Stopped: fix the filter" : "Paused");
        return;
      }
      errors.clear();
      notice.hidden = true;
      if (fresh) nextAfter = null;
      loop = new AbortController();
      if (nextAfter !== null && !kept.following) {
        setStatus("Paused");
        return;
      }
      run(loop.signal, fb);
    }

    filters.addEventListener("submit", (e) => {
      e.preventDefault();
      kept.types = [...types.selectedOptions].map((o) => o.value);
      kept.user = user.value.trim();
      restart(true);
    });
    types.addEventListener("change", () => {
      kept.types = [...types.selectedOptions].map((o) => o.value);
      restart(true);
    });
    clear.addEventListener("click", () => {
      for (const o of types.options) o.selected = false;
      user.value = "";
      kept.types = [];
      kept.user = "";
      restart(true);
    });
    toggle.addEventListener("click", () => {
      kept.following = !kept.following;
      paintToggle();
      if (kept.following) restart(false);
      else {
        if (loop) loop.abort();
        loop = null;
        setStatus("Paused");
      }
    });

    restart(true);
    return () => {
      if (loop) loop.abort();
      loop = null;
    };
  },
};
