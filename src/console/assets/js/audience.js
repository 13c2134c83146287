// Screen: Audience & send. A visual builder of the filter (API.md §6) kept in step with
// its JSON text, the exact count and first page of the audience (CountAudience,
// ListAudience), a CSV export of the whole audience, and the broadcast composer
// (UserBroadcast, §7) whose audience is that filter, behind an in-page confirm step that
// states the exact count and the quota left today.

import { h, put, field, errorBox, busy, confirmStep, readNote, loading, fmt, uid } from "./ui.js";
import {
  CannotShow, FILTER_FIELDS, OPS, convert, convertForm, fromModel, newTag, parseJson, toModel,
} from "./filter.js";

const RECOUNT_MS = 250;
const LIST_LIMIT = 100;
const CSV_PAGE = 1000;
const MAX_TTL = 604800;
const MAX_CONTENT = 65536;
const INT32 = [-2147483648, 2147483647];
/** Fields of a CountAudience body that come from the page, not from the filter text. */
const PAGE_FIELDS = ["AppId", "InboxType", "Cursor", "Limit"];

const utf8 = new TextEncoder();
const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });

function token() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** UTC to the second, as the other screens show times. */
const when = (ms) =>
  typeof ms === "number" && ms > 0 ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z") : "";

export default {
  id: "audience",
  title: "Audience & send",
  mount(root, ctx) {
    const api = ctx.api;
    const appId = ctx.appId();
    const inbox = ctx.inbox();
    let alive = true;

    // ---------------------------------------------------------------- filter state
    let initial = ctx.shared.filter;
    if (initial === null || typeof initial !== "object" || Array.isArray(initial)) initial = {};
    const text = h("textarea", {
      testid: "audience-filter",
      rows: "5",
      spellcheck: "false",
      autocomplete: "off",
      autocapitalize: "off",
      class: "mono",
    });
    text.value = JSON.stringify(initial);
    /** The last filter the builder can show (the builder always shows this). */
    let model;
    const builder = h("div", { class: "builder", role: "group", "aria-label": "Filter builder" });
    const builderNote = h("p", { class: "note", role: "status", testid: "audience-builder-note", hidden: true });
    try {
      model = toModel(initial);
    } catch (e) {
      model = { form: "all" };
      put(builderNote, `The builder cannot show this filter (${e.message}); ` +
        "it is counted as written. Editing the builder replaces the text.");
      builderNote.hidden = false;
    }

    // Suggestions: the app's keys, and each key's values when a value field needs them.
    const keysList = h("datalist", { id: uid("tag-keys") });
    const valueLists = new Map(); // key -> datalist
    const listsHolder = h("div", { hidden: true }, keysList);
    api.call("ListTags", { AppId: appId, InboxType: inbox, Limit: 1000 }).then((r) => {
      if (!alive) return;
      put(keysList, (r.Keys || []).map((k) =>
        h("option", { value: k.Key, label: `${fmt(k.Users)} users, ${fmt(k.Values)} values` })));
    }, () => {});
    function valuesListId(key) {
      if (!key) return null;
      let dl = valueLists.get(key);
      if (!dl) {
        dl = h("datalist", { id: uid("tag-values") });
        valueLists.set(key, dl);
        listsHolder.append(dl);
        api.call("ListTags", { AppId: appId, InboxType: inbox, Key: key, Limit: 100 }).then((r) => {
          if (!alive) return;
          put(dl, (r.Values || []).filter((v) => v.Value !== "").map((v) =>
            h("option", { value: v.Value, label: `${fmt(v.Users)} users` })));
        }, () => valueLists.delete(key));
      }
      return dl.id;
    }

    // ---------------------------------------------------------------- builder
    /** The builder changed: write the text, share it, recount; re-render on structure. */
    function edited(structural, focusKey) {
      const part = fromModel(model);
      text.value = JSON.stringify(part);
      lastText = text.value;
      ctx.shared.filter = part;
      builderNote.hidden = true;
      if (structural) renderBuilder(focusKey);
      schedule();
    }

    function renderBuilder(focusKey) {
      const active = focusKey || document.activeElement?.dataset?.fkey;
      const form = h("select", {
        "data-fkey": "form",
        onchange: () => {
          model = convertForm(model, form.value);
          edited(true, "form");
        },
      },
      h("option", { value: "all", text: "Everyone: every registered user of the app" }),
      h("option", { value: "tags", text: "Any or all of some tags (vendor Tags and TagOp)" }),
      h("option", { value: "tree", text: "A filter tree (And, Or, Not, Tag, Key)" }));
      form.value = model.form;
      const parts = [field("Select users by", form)];
      if (model.form === "tags") parts.push(renderTags());
      if (model.form === "tree") parts.push(h("ul", { class: "ftree" }, renderNode(model.root, "r", null)));
      put(builder, parts);
      if (active) {
        const el = builder.querySelector(`[data-fkey="${CSS.escape(active)}"]`);
        if (el) el.focus();
      }
    }

    function keyInput(obj, fkey, label) {
      const input = h("input", {
        value: obj.key,
        list: keysList.id,
        "data-fkey": fkey,
        spellcheck: "false",
        autocomplete: "off",
        autocapitalize: "off",
        oninput: () => {
          obj.key = input.value;
          edited(false);
        },
      });
      return field(label, input);
    }

    function valueInput(obj, fkey, keyOf) {
      const input = h("input", {
        value: obj.value,
        "data-fkey": fkey,
        spellcheck: "false",
        autocomplete: "off",
        autocapitalize: "off",
        oninput: () => {
          obj.value = input.value;
          obj.bare = false;
          edited(false);
        },
        onfocus: () => {
          const id = valuesListId(keyOf());
          if (id) input.setAttribute("list", id);
          else input.removeAttribute("list");
        },
      });
      const id = valuesListId(obj.key);
      if (id) input.setAttribute("list", id);
      return field("Value", input);
    }

    function renderTags() {
      const op = h("select", {
        "data-fkey": "tagop",
        onchange: () => {
          model.op = Number(op.value);
          edited(false);
        },
      },
      h("option", { value: "0", text: "any of these tags (TagOp 0)" }),
      h("option", { value: "1", text: "all of these tags (TagOp 1)" }));
      op.value = String(model.op);
      const rows = model.tags.map((t, i) =>
        h("li", { class: "row ftag" },
          keyInput(t, `t${i}:key`, `Tag ${i + 1} key`),
          valueInput(t, `t${i}:value`, () => t.key),
          h("button", {
            type: "button",
            "data-fkey": `t${i}:remove`,
            "aria-label": `Remove tag ${i + 1}`,
            onclick: () => {
              model.tags.splice(i, 1);
              const next = model.tags.length ? `t${Math.min(i, model.tags.length - 1)}:remove` : "tags:add";
              edited(true, next);
            },
          }, "Remove")));
      return h("div", { class: "ftags" },
        field("Users matching", op),
        h("ul", { class: "ftaglist" }, rows),
        h("button", {
          type: "button",
          "data-fkey": "tags:add",
          onclick: () => {
            model.tags.push({ key: "", value: "", bare: false });
            edited(true, `t${model.tags.length - 1}:key`);
          },
        }, "Add tag"));
    }

    const OP_TEXT = {
      And: "And: all of",
      Or: "Or: any of",
      Not: "Not: users not matching",
      Tag: "Tag: key equals value",
      Key: "Key: has the key",
    };

    /** One node as a list item; `parent` is { remove() } when the node can be removed. */
    function renderNode(n, path, parent) {
      const type = h("select", {
        "data-fkey": `${path}:op`,
        onchange: () => {
          const replaced = convert({ ...n }, type.value);
          for (const k of Object.keys(n)) delete n[k];
          Object.assign(n, replaced);
          edited(true, `${path}:op`);
        },
      }, OPS.map((o) => h("option", { value: o, text: OP_TEXT[o] })));
      type.value = n.op;
      const head = [field("Condition", type)];
      if (n.op === "Tag") {
        head.push(keyInput(n, `${path}:key`, "Key"), valueInput(n, `${path}:value`, () => n.key));
      } else if (n.op === "Key") {
        head.push(keyInput(n, `${path}:key`, "Key"));
      }
      if (parent) {
        head.push(h("button", {
          type: "button",
          "data-fkey": `${path}:remove`,
          "aria-label": `Remove this ${n.op} condition`,
          onclick: () => parent.remove(),
        }, "Remove"));
      }
      const item = h("li", { class: `fnode fnode-${n.op.toLowerCase()}` }, h("div", { class: "row" }, head));
      if (n.op === "And" || n.op === "Or") {
        const kids = n.items.map((c, i) =>
          renderNode(c, `${path}.${i}`, {
            remove: () => {
              n.items.splice(i, 1);
              const next = n.items.length ? `${path}.${Math.min(i, n.items.length - 1)}:op` : `${path}:add`;
              edited(true, next);
            },
          }));
        item.append(
          h("ul", { class: "ftree" }, kids),
          h("button", {
            type: "button",
            class: "fadd",
            "data-fkey": `${path}:add`,
            onclick: () => {
              n.items.push(newTag());
              edited(true, `${path}.${n.items.length - 1}:key`);
            },
          }, `Add condition to this ${n.op}`),
        );
      } else if (n.op === "Not") {
        item.append(h("ul", { class: "ftree" }, renderNode(n.item, `${path}.0`, null)));
      }
      return item;
    }

    // ---------------------------------------------------------------- text area
    /** The filter part of the current text: { part } or { error } (an error for errorBox). */
    function currentPart() {
      let part;
      try {
        part = parseJson(text.value);
      } catch (e) {
        return { error: { code: "InvalidJSON", message: `${e.message}; nothing was sent` } };
      }
      const page = Object.keys(part).filter((k) => PAGE_FIELDS.includes(k));
      if (page.length) {
        return {
          error: {
            code: "InvalidFilter",
            message: `remove ${page.map((k) => `"${k}"`).join(", ")} from the filter: ` +
              "the app and inbox come from the selectors at the top of the page",
          },
        };
      }
      return { part };
    }

    let lastText = text.value;
    const onText = () => {
      if (text.value === lastText) return;
      lastText = text.value;
      let part;
      try {
        part = parseJson(text.value);
      } catch (e) {
        put(builderNote, `The builder shows the last valid filter: ${e.message}. ` +
          "Editing the builder replaces the text.");
        builderNote.hidden = false;
        schedule();
        return;
      }
      ctx.shared.filter = part;
      try {
        model = toModel(part);
        builderNote.hidden = true;
        renderBuilder();
      } catch (e) {
        if (!(e instanceof CannotShow)) throw e;
        put(builderNote, `The builder cannot show this filter (${e.message}); ` +
          "it is counted as written. Editing the builder replaces the text.");
        builderNote.hidden = false;
      }
      schedule();
    };
    text.addEventListener("input", onText);
    text.addEventListener("change", onText);

    // ---------------------------------------------------------------- count and list
    const countEl = h("span", { class: "count", testid: "audience-count" });
    const countState = h("span", { class: "hint", testid: "audience-count-state" });
    const countBox = h("div", { class: "audience-count", "aria-live": "polite" },
      h("span", { class: "count-label", text: "Users selected: " }), countEl, " ", countState);
    const countErr = errorBox("audience-error");
    const listBody = h("div", { class: "audience-list-body" });
    const listBox = h("section", { class: "panel", testid: "audience-list", "aria-label": "First users of the audience" },
      h("h3", { text: "First users" }), listBody);

    let timer = null;
    let seq = 0;
    let inflight = null;

    /** A change: forget the count shown (it was another filter's) and recount soon. */
    function schedule() {
      clearTimeout(timer);
      seq++;
      inflight?.abort();
      inflight = null;
      countEl.textContent = "";
      countBox.setAttribute("aria-busy", "true");
      countState.textContent = "counting…";
      timer = setTimeout(recount, RECOUNT_MS);
    }

    function recount() {
      timer = null;
      const my = ++seq;
      inflight?.abort();
      const ac = new AbortController();
      inflight = ac;
      const cur = currentPart();
      if (cur.error) {
        countErr.show(cur.error);
        countState.textContent = "";
        countBox.removeAttribute("aria-busy");
        put(listBody, h("p", { class: "empty", text: "No list: the filter is not valid." }));
        return;
      }
      const body = { AppId: appId, InboxType: inbox, ...cur.part };
      const signal = ac.signal;
      api.call("CountAudience", body, { signal }).then((r) => {
        if (!alive || my !== seq) return;
        countErr.clear();
        countEl.textContent = fmt(r.Count);
        countEl.dataset.count = String(r.Count);
        countState.textContent = "";
        countBox.removeAttribute("aria-busy");
      }, (e) => {
        if (!alive || my !== seq || (e && e.name === "AbortError")) return;
        countEl.textContent = "";
        countState.textContent = "";
        countBox.removeAttribute("aria-busy");
        countErr.show(e);
      });
      listBox.setAttribute("aria-busy", "true");
      api.call("ListAudience", { ...body, Limit: LIST_LIMIT }, { signal }).then((r) => {
        if (!alive || my !== seq) return;
        listBox.removeAttribute("aria-busy");
        showList(r);
      }, (e) => {
        if (!alive || my !== seq || (e && e.name === "AbortError")) return;
        listBox.removeAttribute("aria-busy");
        put(listBody, h("p", { class: "empty", text: `No list: ${e.code || "Error"}: ${e.message}` }));
      });
    }

    function showList(r) {
      const ids = r.UserIds || [];
      if (!ids.length) {
        put(listBody, h("p", { class: "empty", testid: "audience-list-empty", text: "No user matches this filter." }));
        return;
      }
      const more = r.NextCursor ? " (more: download the CSV for every user)" : "";
      put(listBody,
        h("p", { class: "hint", text: `The first ${fmt(ids.length)} users${more}.` }),
        h("div", { class: "scroll audience-ids" },
          h("table", {},
            h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "num", text: "UserId" }))),
            h("tbody", {}, ids.map((id) =>
              h("tr", { testid: "audience-user" }, h("td", { class: "num mono", text: String(id) })))))));
    }

    // ---------------------------------------------------------------- CSV export
    const csvBtn = h("button", { type: "button", testid: "audience-csv", onclick: () => downloadCsv() }, "Download CSV");
    const csvCancel = h("button", { type: "button", testid: "audience-csv-cancel", hidden: true,
      onclick: () => csvAbort?.abort() }, "Cancel download");
    const csvBar = h("progress", { max: "1", value: "0", "aria-label": "Users downloaded" });
    const csvText = h("span", { testid: "audience-csv-progress" });
    const csvProgress = h("div", { class: "row csv-progress", role: "status", hidden: true }, csvBar, csvText);
    const csvErr = errorBox("audience-csv-error");
    let csvAbort = null;
    const urls = [];

    async function downloadCsv() {
      const cur = currentPart();
      csvErr.clear();
      if (cur.error) {
        csvErr.show(cur.error);
        return;
      }
      const body = { AppId: appId, InboxType: inbox, ...cur.part };
      const ac = new AbortController();
      csvAbort = ac;
      const signal = ac.signal;
      csvBtn.disabled = true;
      csvBtn.setAttribute("aria-busy", "true");
      csvCancel.hidden = false;
      csvProgress.hidden = false;
      csvText.textContent = "counting…";
      csvBar.removeAttribute("value");
      try {
        const total = (await withRetry(() => api.call("CountAudience", body, { signal }), signal)).Count;
        csvBar.max = Math.max(total, 1);
        const ids = [];
        let cursor = "";
        const progress = () => {
          csvBar.value = Math.min(ids.length, csvBar.max);
          csvText.textContent = `${fmt(ids.length)} / ${fmt(total)} users`;
        };
        progress();
        do {
          const page = await withRetry(() => api.call("ListAudience",
            cursor ? { ...body, Limit: CSV_PAGE, Cursor: cursor } : { ...body, Limit: CSV_PAGE }, { signal }), signal);
          for (const id of page.UserIds || []) ids.push(id);
          cursor = page.NextCursor || "";
          if (!alive) return;
          progress();
        } while (cursor);
        save(ids);
        csvText.textContent = `${fmt(ids.length)} / ${fmt(total)} users: saved`;
      } catch (e) {
        if (e && e.name === "AbortError") {
          if (alive) csvText.textContent = "Cancelled.";
        } else if (alive) {
          csvProgress.hidden = true;
          csvErr.show(e);
        }
      } finally {
        if (csvAbort === ac) csvAbort = null;
        csvBtn.disabled = false;
        csvBtn.removeAttribute("aria-busy");
        csvCancel.hidden = true;
      }
    }

    /** Retries a read refused by the rate limit (FlowLimitExceeded) after a short wait. */
    async function withRetry(work, signal) {
      for (let attempt = 0; ; attempt++) {
        try {
          return await work();
        } catch (e) {
          if (!(e && e.code === "FlowLimitExceeded") || attempt >= 30) throw e;
          csvText.textContent += " (rate limited, waiting)";
          await sleep(1000, signal);
        }
      }
    }

    function save(ids) {
      const blob = new Blob(["UserId\n", ids.join("\n"), ids.length ? "\n" : ""], { type: "text/csv;charset=utf-8" });
      const url = URL.createObjectURL(blob);
      urls.push(url);
      const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
      const a = h("a", { href: url, download: `audience-app${appId}-inbox${inbox}-${stamp}.csv`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => {
        URL.revokeObjectURL(url);
        const i = urls.indexOf(url);
        if (i >= 0) urls.splice(i, 1);
      }, 60_000);
    }

    // ---------------------------------------------------------------- composer
    const ro = !ctx.canWrite;
    const content = h("textarea", { testid: "broadcast-content", rows: "4", spellcheck: "false", disabled: ro });
    content.value = '{"text":"Hello from tagcast"}';
    const msgType = h("input", { testid: "broadcast-msgtype", type: "number", step: "1",
      min: String(INT32[0]), max: String(INT32[1]), value: "10001", disabled: ro });
    const ttl = h("input", { testid: "broadcast-ttl", type: "number", step: "1", min: "1",
      max: String(MAX_TTL), value: "86400", disabled: ro });
    const sender = h("input", { testid: "broadcast-sender", type: "text", inputmode: "numeric",
      value: "10001", spellcheck: "false", autocomplete: "off", disabled: ro });
    const ext = h("textarea", { testid: "broadcast-ext", rows: "2", spellcheck: "false",
      placeholder: '{"key":"value"}', disabled: ro });
    const sendBtn = h("button", { type: "button", class: "primary", testid: "broadcast-send", disabled: ro,
      onclick: () => onSend() }, "Send broadcast…");
    const confirmArea = h("div", { class: "confirm-area" });
    const sendErr = errorBox("broadcast-error");
    const sendResult = h("div", { class: "result", role: "status", testid: "broadcast-result", hidden: true });
    const quotaLine = h("p", { class: "hint", testid: "broadcast-quota" });
    function showQuota(app) {
      if (!app) return;
      const left = Math.max(0, app.BroadcastsPerDay - app.BroadcastsToday);
      quotaLine.textContent = `Today (UTC): ${app.BroadcastsToday} of ${app.BroadcastsPerDay} broadcasts sent, ${left} left.`;
    }
    showQuota(ctx.app());

    const invalid = (el, message) => {
      el.focus();
      return { code: "InvalidParam", message };
    };

    /** The composer's fields as UserBroadcast wants them, or throws an error for errorBox. */
    function readComposer() {
      const c = content.value;
      const bytes = utf8.encode(c).length;
      if (bytes < 1 || bytes > MAX_CONTENT) {
        throw invalid(content, `Content is ${bytes} bytes; it must be 1 to ${fmt(MAX_CONTENT)} bytes`);
      }
      const mt = Number(msgType.value);
      if (msgType.value.trim() === "" || !Number.isInteger(mt) || mt < INT32[0] || mt > INT32[1]) {
        throw invalid(msgType, `MsgType must be a 32-bit integer, got "${msgType.value}"`);
      }
      const t = Number(ttl.value);
      if (ttl.value.trim() === "" || !Number.isInteger(t) || t < 1 || t > MAX_TTL) {
        throw invalid(ttl, `MsgTTL must be 1 to ${fmt(MAX_TTL)} seconds (7 days), got "${ttl.value}"`);
      }
      const s = sender.value.trim();
      let senderJson;
      if (!/^\d{1,19}$/.test(s) || BigInt(s) < 1n || BigInt(s) > 9223372036854775807n) {
        throw invalid(sender, `Sender must be a positive 64-bit user id, got "${sender.value}"`);
      }
      if (BigInt(s) <= BigInt(Number.MAX_SAFE_INTEGER)) senderJson = Number(s);
      else if (typeof JSON.rawJSON === "function") senderJson = JSON.rawJSON(s);
      else throw invalid(sender, "this browser cannot send a Sender above 2^53 exactly");
      const fields = { Sender: senderJson, MsgTTL: t, MsgType: mt, Content: c };
      if (ext.value.trim() !== "") {
        let e;
        try {
          e = JSON.parse(ext.value);
        } catch (err) {
          throw invalid(ext, `Ext is not valid JSON (${err.message})`);
        }
        if (e === null || typeof e !== "object" || Array.isArray(e) ||
            !Object.values(e).every((v) => typeof v === "string")) {
          throw invalid(ext, 'Ext must be a JSON object of strings, such as {"key":"value"}');
        }
        fields.Ext = e;
      }
      return fields;
    }

    async function onSend() {
      sendResult.hidden = true;
      confirmArea.replaceChildren();
      const prepared = await busy(sendBtn, sendErr, async () => {
        const fields = readComposer();
        const cur = currentPart();
        if (cur.error) throw cur.error;
        const extra = Object.keys(cur.part).filter((k) => !FILTER_FIELDS.includes(k));
        if (extra.length) {
          throw {
            code: "InvalidFilter",
            message: `the filter has ${extra.map((k) => `"${k}"`).join(", ")}, which is not one of ` +
              `${FILTER_FIELDS.join(", ")}; fix it before sending`,
          };
        }
        const [counted, app] = await Promise.all([
          api.call("CountAudience", { AppId: appId, InboxType: inbox, ...cur.part }),
          ctx.refreshApps(),
        ]);
        return { fields, part: cur.part, count: counted.Count, app };
      });
      if (!prepared || !alive) return;
      const { fields, part, count, app } = prepared;
      showQuota(app);
      const perDay = app ? app.BroadcastsPerDay : null;
      const left = app ? Math.max(0, app.BroadcastsPerDay - app.BroadcastsToday) : null;
      const message = h("div", {},
        h("p", {},
          "Send this broadcast to exactly ",
          h("strong", { testid: "broadcast-confirm-count", text: String(count) }),
          count === 1 ? " user" : " users",
          ` of app ${appId}, inbox ${inbox}? `,
          "Quota left today: ",
          h("strong", { testid: "broadcast-confirm-quota", text: left === null ? "unknown" : String(left) }),
          perDay === null ? "" : ` of ${perDay} broadcasts (UTC day).`),
        left === 0 ? h("p", { class: "note", text: "No quota is left today: the server will refuse this send." }) : null,
        count === 0 ? h("p", { class: "note", text: "The audience is empty: nobody will receive it." }) : null,
        h("p", { class: "hint" }, "Filter: ", h("code", { text: JSON.stringify(part) })));
      sendBtn.disabled = true;
      const ok = await confirmStep(confirmArea, message, { testid: "broadcast-confirm", yes: "Confirm and send" });
      sendBtn.disabled = ro;
      if (!ok || !alive) {
        if (alive) sendBtn.focus();
        return;
      }
      const body = { AppId: appId, InboxType: inbox, ...fields, ...part, ClientToken: token() };
      const r = await busy(sendBtn, sendErr, () => api.call("UserBroadcast", body));
      if (!r || !alive) return;
      put(sendResult,
        "Sent broadcast ",
        h("strong", { testid: "broadcast-result-id", text: r.BroadcastId }),
        " to ",
        h("strong", { testid: "broadcast-result-count", text: String(r.AudienceCount) }),
        r.AudienceCount === 1 ? " user" : " users",
        r.ExpireTime ? `; it expires ${when(r.ExpireTime)}. ` : ". ",
        h("a", { href: "#broadcasts", text: "See it in Broadcasts" }));
      sendResult.hidden = false;
      ctx.refreshApps().then((a) => alive && showQuota(a), () => {});
    }

    // ---------------------------------------------------------------- layout
    root.append(
      listsHolder,
      h("section", { class: "panel", "aria-labelledby": "audience-h" },
        h("h3", { id: "audience-h", text: `Audience of app ${appId}, inbox ${inbox}` }),
        builder,
        builderNote,
        field("Filter (the filter part of a CountAudience body, JSON)", text,
          'Examples: {} (everyone), {"Tags":["level:gold"],"TagOp":0}, {"Filter":{"And":[{"Key":"city"},{"Not":{"Tag":"level:free"}}]}}'),
        countBox,
        countErr,
        h("div", { class: "row" },
          h("button", { type: "button", testid: "audience-refresh", onclick: () => schedule() }, "Recount"),
          csvBtn, csvCancel),
        csvProgress,
        csvErr),
      listBox,
      h("section", { class: "panel composer", "aria-labelledby": "composer-h" },
        h("h3", { id: "composer-h", text: "Send a broadcast to this audience" }),
        readNote(ctx, "sending a broadcast"),
        quotaLine,
        field("Content", content, `1 to ${fmt(MAX_CONTENT)} bytes, delivered as is (often JSON).`),
        h("div", { class: "row" },
          field("MsgType", msgType),
          field("MsgTTL (seconds)", ttl, `1 to ${fmt(MAX_TTL)} (7 days)`),
          field("Sender (UserId)", sender)),
        field("Ext (optional JSON object of strings)", ext),
        h("div", { class: "row" }, sendBtn),
        confirmArea,
        sendErr,
        sendResult),
    );
    renderBuilder();
    put(listBody, loading());
    schedule();

    return () => {
      alive = false;
      clearTimeout(timer);
      inflight?.abort();
      csvAbort?.abort();
      for (const u of urls) URL.revokeObjectURL(u);
    };
  },
};
