// Screen: Broadcasts. The app's broadcasts (ListBroadcasts, newest first) with their
// status, audience and webhook delivery progress (refreshed every 2 s while pages are
// pending), details (GetBroadcast) and recall (RecallBroadcast) behind an in-page confirm.

import { h, put, errorBox, busy, confirmStep, readNote, loading, fmt, uid } from "./ui.js";

const PAGE = 100;
const POLL_MS = 2000;
const PREVIEW = 120;

const iso = (ms) => (typeof ms === "number" && ms > 0 ? new Date(ms).toISOString() : "");
/** UTC to the second, as the other screens show times. */
const when = (ms) => iso(ms).replace("T", " ").replace(/\.\d{3}Z$/, "Z");

function status(b, now = Date.now()) {
  if (b.Recalled) return "recalled";
  if (typeof b.ExpireTime === "number" && b.ExpireTime <= now) return "expired";
  return "sent";
}

const delivery = (b) => ({ Pages: 0, Delivered: 0, Pending: 0, Failed: 0, Dropped: 0, ...(b.Delivery || {}) });
const pending = (b) => delivery(b).Pending > 0;

function preview(content) {
  const s = String(content ?? "").replace(/\s+/g, " ");
  return s.length > PREVIEW ? `${s.slice(0, PREVIEW)}…` : s;
}

export default {
  id: "broadcasts",
  title: "Broadcasts",
  mount(root, ctx) {
    const api = ctx.api;
    const appId = ctx.appId();
    let alive = true;
    let timer = null;
    let polling = null; // AbortController of the refresh in flight
    let cursor = "";
    /** BroadcastId -> row { data, el, update(data), details } */
    const rows = new Map();

    const list = h("ul", { class: "bcasts" });
    const empty = h("p", { class: "empty", testid: "broadcast-empty", hidden: true,
      text: "No broadcasts yet: send one from Audience & send." });
    const box = h("div", { testid: "broadcast-list", "aria-label": `Broadcasts of app ${appId}`, role: "region" },
      loading("Loading broadcasts…"));
    const listErr = errorBox("broadcast-list-error");
    const more = h("button", { type: "button", testid: "broadcast-more", hidden: true, onclick: () => loadMore() },
      "Load older broadcasts");
    const refreshBtn = h("button", { type: "button", testid: "broadcast-refresh", onclick: () => reload() }, "Refresh");

    // ------------------------------------------------------------ one row
    function makeRow(b) {
      const id = String(b.BroadcastId);
      const badge = h("span", { class: "badge", testid: "broadcast-status" });
      const audience = h("span", { testid: "broadcast-audience" });
      const time = h("time", { testid: "broadcast-time" });
      const contentEl = h("p", { class: "bcast-preview mono", testid: "broadcast-content-preview" });
      const dText = h("span", { class: "delivery-text" });
      const segs = { ok: h("span", { class: "ok" }), pend: h("span", {}), fail: h("span", { class: "fail" }),
        drop: h("span", { class: "rest" }) };
      const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0" },
        segs.ok, segs.pend, segs.fail, segs.drop);
      const dEl = h("div", { class: "delivery", testid: "broadcast-delivery" }, dText, bar);
      const err = errorBox("broadcast-row-error");
      const confirmArea = h("div", { class: "confirm-area" });
      const detailsId = uid("bcast-details");
      const details = h("div", { class: "bcast-details", id: detailsId, testid: "broadcast-details", hidden: true });
      const toggle = h("button", { type: "button", testid: "broadcast-details-toggle", "aria-expanded": "false",
        "aria-controls": detailsId, onclick: () => toggleDetails() }, "Details");
      const recall = h("button", { type: "button", class: "danger", testid: "broadcast-recall",
        onclick: () => onRecall() }, "Recall…");
      const el = h("li", { class: "bcast", testid: "broadcast-row", "data-broadcast-id": id },
        h("div", { class: "bcast-head" },
          h("strong", { class: "mono", text: `#${id}` }), badge, audience, time),
        contentEl,
        dEl,
        h("div", { class: "row" }, toggle, recall),
        confirmArea,
        err,
        details);

      const row = { data: b, el, update };

      function update(next) {
        row.data = next;
        const st = status(next);
        badge.textContent = st;
        badge.className = `badge badge-${st}`;
        el.dataset.status = st;
        audience.textContent = `${fmt(next.AudienceCount)} ${next.AudienceCount === 1 ? "user" : "users"}`;
        audience.dataset.count = String(next.AudienceCount ?? "");
        time.textContent = `sent ${when(next.CreateTime)}`;
        time.setAttribute("datetime", iso(next.CreateTime));
        contentEl.textContent = preview(next.Content);
        contentEl.title = String(next.Content ?? "").slice(0, 2000);
        const d = delivery(next);
        let words = `${d.Delivered} / ${d.Pages} pages delivered`;
        if (d.Pages === 0) words += " · no webhook delivery";
        else {
          if (d.Pending) words += ` · ${d.Pending} pending`;
          if (d.Failed) words += ` · ${d.Failed} failed`;
          if (d.Dropped) words += ` · ${d.Dropped} dropped (recalled)`;
        }
        dText.textContent = words;
        dEl.dataset.pages = String(d.Pages);
        dEl.dataset.delivered = String(d.Delivered);
        dEl.dataset.pending = String(d.Pending);
        dEl.dataset.failed = String(d.Failed);
        const total = Math.max(d.Pages, 1);
        const pct = (n) => `${Math.min(100, (100 * n) / total)}%`;
        segs.ok.style.width = pct(d.Delivered);
        segs.pend.style.width = pct(d.Pending);
        segs.fail.style.width = pct(d.Failed);
        segs.drop.style.width = pct(d.Dropped);
        bar.hidden = d.Pages === 0;
        bar.setAttribute("aria-valuemax", String(d.Pages));
        bar.setAttribute("aria-valuenow", String(d.Delivered));
        bar.setAttribute("aria-label", `Broadcast ${id}: ${words}`);
        recall.disabled = !ctx.canWrite || !!next.Recalled;
        if (!details.hidden) renderDetails(next);
      }

      function renderDetails(d) {
        const dl = h("dl", { class: "kv" });
        const add = (k, v) => dl.append(h("dt", { text: k }), h("dd", {}, v));
        const json = (v) => {
          const flat = JSON.stringify(v);
          return h("pre", { class: "mono", text: flat.length <= 80 ? flat : JSON.stringify(v, null, 2) });
        };
        const shown = new Set();
        const order = ["BroadcastId", "InboxType", "Sender", "MsgType", "AudienceCount", "Recalled",
          "CreateTime", "ExpireTime", "Tags", "TagOp", "Filter", "Ext", "Delivery", "Content"];
        for (const k of [...order, ...Object.keys(d)]) {
          if (shown.has(k) || !(k in d)) continue;
          shown.add(k);
          const v = d[k];
          if (k === "CreateTime" || k === "ExpireTime") add(k, `${when(v)} (${v} ms)`);
          else if (k === "Content") add(k, h("pre", { class: "mono", text: String(v) }));
          else if (k === "Delivery") {
            const x = delivery(d);
            add(k, `${x.Pages} pages: ${x.Delivered} delivered, ${x.Pending} pending, ${x.Failed} failed, ` +
              `${x.Dropped} dropped`);
          } else if (v !== null && typeof v === "object") add(k, json(v));
          else add(k, v === null ? "none" : String(v));
        }
        put(details, dl);
      }

      async function toggleDetails() {
        if (!details.hidden) {
          details.hidden = true;
          toggle.setAttribute("aria-expanded", "false");
          return;
        }
        const r = await busy(toggle, err, () => api.call("GetBroadcast", { AppId: appId, BroadcastId: id }));
        if (!r || !alive) return;
        details.hidden = false;
        toggle.setAttribute("aria-expanded", "true");
        update(r.Broadcast);
        schedule();
      }

      async function onRecall() {
        err.clear();
        const message = h("p", {},
          `Recall broadcast ${id} (${fmt(row.data.AudienceCount)} users)? It leaves every recipient's list and ` +
          "its undelivered webhook pages are dropped. This cannot be undone.");
        recall.disabled = true;
        const ok = await confirmStep(confirmArea, message,
          { testid: "broadcast-recall-confirm", yes: "Recall broadcast", danger: true });
        if (!alive) return;
        recall.disabled = !ctx.canWrite || !!row.data.Recalled;
        if (!ok) {
          recall.focus();
          return;
        }
        const done = await busy(recall, err, async () => {
          await api.call("RecallBroadcast", { AppId: appId, BroadcastId: id });
          return true;
        });
        if (!done || !alive) return;
        update({ ...row.data, Recalled: true });
        try {
          const r = await api.call("GetBroadcast", { AppId: appId, BroadcastId: id });
          if (alive) update(r.Broadcast);
        } catch (e) {
          if (alive && e.code !== "BroadcastNotFound") err.show(e);
        }
        schedule();
      }

      update(b);
      return row;
    }

    // ------------------------------------------------------------ the list
    function showEmpty() {
      empty.hidden = rows.size > 0;
    }

    /** Adds or updates rows; `prepend` puts new ones (newer than every row) on top. */
    function merge(broadcasts, prepend) {
      const fresh = [];
      for (const b of broadcasts) {
        const id = String(b.BroadcastId);
        const row = rows.get(id);
        if (row) row.update(b);
        else {
          const r = makeRow(b);
          rows.set(id, r);
          fresh.push(r.el);
        }
      }
      if (prepend) list.prepend(...fresh);
      else list.append(...fresh);
      showEmpty();
    }

    async function reload() {
      clearTimeout(timer);
      polling?.abort();
      const r = await busy(refreshBtn, listErr, () => api.call("ListBroadcasts", { AppId: appId, Limit: PAGE }));
      if (!alive) return;
      if (!r) {
        if (!rows.size) box.replaceChildren();
        return;
      }
      rows.clear();
      list.replaceChildren();
      put(box, list, empty);
      merge(r.Broadcasts || [], false);
      cursor = r.NextCursor || "";
      more.hidden = !cursor;
      schedule();
    }

    async function loadMore() {
      if (!cursor) return;
      const r = await busy(more, listErr, () =>
        api.call("ListBroadcasts", { AppId: appId, Cursor: cursor, Limit: PAGE }));
      if (!r || !alive) return;
      merge(r.Broadcasts || [], false);
      cursor = r.NextCursor || "";
      more.hidden = !cursor;
      schedule();
    }

    /** Polls while any row has pending pages. */
    function schedule() {
      clearTimeout(timer);
      timer = null;
      if (!alive) return;
      if ([...rows.values()].some((r) => pending(r.data))) timer = setTimeout(poll, POLL_MS);
    }

    async function poll() {
      timer = null;
      const ac = new AbortController();
      polling = ac;
      const signal = ac.signal;
      try {
        const r = await api.call("ListBroadcasts", { AppId: appId, Limit: PAGE }, { signal });
        if (!alive || signal.aborted) return;
        const seen = new Set((r.Broadcasts || []).map((b) => String(b.BroadcastId)));
        merge(r.Broadcasts || [], true);
        // Older rows (beyond the first page) still delivering: one GetBroadcast each.
        for (const [id, row] of rows) {
          if (seen.has(id) || !pending(row.data)) continue;
          try {
            const g = await api.call("GetBroadcast", { AppId: appId, BroadcastId: id }, { signal });
            if (alive) row.update(g.Broadcast);
          } catch (e) {
            if (e && e.name === "AbortError") return;
            if (e && e.code === "BroadcastNotFound") {
              // Purged (expired): nothing is pending any more.
              row.update({ ...row.data, Delivery: { ...delivery(row.data), Pending: 0 } });
            }
          }
        }
        listErr.clear();
      } catch (e) {
        if (e && e.name === "AbortError") return;
        if (alive) listErr.show(e);
      } finally {
        if (polling === ac) polling = null;
      }
      if (alive && !signal.aborted) schedule();
    }

    root.append(
      ...[readNote(ctx, "recalling a broadcast")].filter(Boolean),
      h("div", { class: "row" }, refreshBtn),
      listErr,
      box,
      more,
    );
    reload();

    return () => {
      alive = false;
      clearTimeout(timer);
      polling?.abort();
    };
  },
};
