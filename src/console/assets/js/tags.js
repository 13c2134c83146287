// Screen: Tags (API.md §10 ListTags): the app's tag keys in the chosen inbox with their
// user counts, and for a chosen key the distribution of its values as a bar chart.
import { h, put, fmt, errorBox, loading } from "./ui.js";

const TOP = 10;
const KEY_LIMIT = 100;

/** The key last shown: shown again when the screen is re-mounted (inbox changed). */
let lastKey = null;
let lastSigner = "";

const pct = (n, total) => (total > 0 ? (100 * n) / total : 0);
const pctText = (n, total) => `${pct(n, total).toFixed(1)}%`;

function bar(n, total, cls) {
  const fill = h("span", { class: cls || null });
  fill.style.width = `${Math.min(100, pct(n, total)).toFixed(2)}%`;
  return h("div", { class: "bar value-bar", "aria-hidden": "true" }, fill);
}

export default {
  id: "tags",
  title: "Tags",
  mount(root, ctx) {
    if (lastSigner !== ctx.api.accessKey) {
      lastSigner = ctx.api.accessKey;
      lastKey = null;
    }
    const ac = new AbortController();
    const { signal } = ac;
    const appId = ctx.appId();
    const inbox = ctx.inbox();
    let shown = 0; // the values request in flight; older answers are dropped

    const errors = errorBox("tag-catalog-error");
    const catalog = h("div", { class: "scroll", testid: "tag-catalog", "aria-live": "polite" },
      loading("Loading the tag keys…"));
    const refresh = h("button", { type: "button", testid: "tag-catalog-refresh", onclick: () => load() }, "Refresh");
    const valuesErrors = errorBox("tag-values-error");
    const values = h("section", { class: "panel", testid: "tag-values", "aria-live": "polite", hidden: true });
    root.append(
      h("section", { class: "panel", "aria-labelledby": "tag-catalog-title" },
        h("div", { class: "row spread" },
          h("h3", { id: "tag-catalog-title", text: `Tag keys in app ${appId}, inbox ${inbox}` }), refresh),
        errors, catalog),
      valuesErrors, values);

    let keys = [];

    function renderCatalog() {
      if (keys.length === 0) {
        put(catalog, h("p", { class: "empty", testid: "tags-empty", text: `No tags yet in inbox ${inbox}.` }));
        return;
      }
      put(catalog,
        h("table", { class: "tag-catalog" },
          h("caption", { class: "sr-only", text: `Tag keys in inbox ${inbox}, most users first` }),
          h("thead", {}, h("tr", {},
            h("th", { scope: "col", text: "Key" }),
            h("th", { scope: "col", class: "num", text: "Users" }),
            h("th", { scope: "col", class: "num", text: "Distinct values" }))),
          h("tbody", {}, keys.map((k) =>
            h("tr", { testid: "tag-catalog-row", "data-key": k.Key, class: k.Key === lastKey ? "current" : null },
              h("th", { scope: "row" },
                h("button", {
                  type: "button", class: "link mono", testid: "tag-catalog-choose",
                  "aria-pressed": k.Key === lastKey ? "true" : "false",
                  title: `Show the values of ${k.Key}`,
                  onclick: () => choose(k),
                }, k.Key)),
              h("td", { class: "num", testid: "tag-catalog-users", text: fmt(k.Users) }),
              h("td", { class: "num", testid: "tag-catalog-values", text: fmt(k.Values) }))))),
        keys.length >= KEY_LIMIT
          ? h("p", { class: "hint", text: `The ${KEY_LIMIT} keys with the most users are shown.` })
          : null);
    }

    async function load() {
      errors.clear();
      refresh.disabled = true;
      refresh.setAttribute("aria-busy", "true");
      try {
        const r = await ctx.api.call("ListTags", { AppId: appId, InboxType: inbox, Limit: KEY_LIMIT }, { signal });
        keys = (r && r.Keys) || [];
        renderCatalog();
        const again = lastKey !== null && keys.find((k) => k.Key === lastKey);
        if (again) choose(again);
        else values.hidden = true;
      } catch (e) {
        if (e && e.name === "AbortError") return;
        errors.show(e);
        catalog.replaceChildren();
      } finally {
        refresh.disabled = false;
        refresh.removeAttribute("aria-busy");
      }
    }

    async function choose(k) {
      lastKey = k.Key;
      for (const b of catalog.querySelectorAll("[data-testid=tag-catalog-choose]")) {
        const on = b.closest("tr").dataset.key === k.Key;
        b.setAttribute("aria-pressed", on ? "true" : "false");
        b.closest("tr").classList.toggle("current", on);
      }
      const mine = ++shown;
      valuesErrors.clear();
      values.hidden = false;
      put(values, h("h3", { text: `Values of ${k.Key}` }), loading("Loading the values…"));
      let r, all;
      try {
        // The key's own counts are read again with its values, so "other values" (the key's
        // users minus the top values' users) is computed from one moment's numbers.
        [r, all] = await Promise.all([
          ctx.api.call("ListTags", { AppId: appId, InboxType: inbox, Key: k.Key, Limit: TOP }, { signal }),
          ctx.api.call("ListTags", { AppId: appId, InboxType: inbox, Limit: KEY_LIMIT }, { signal }),
        ]);
      } catch (e) {
        if (mine !== shown || (e && e.name === "AbortError")) return;
        values.hidden = true;
        valuesErrors.show(e);
        return;
      }
      if (mine !== shown) return;
      const fresh = ((all && all.Keys) || []).find((x) => x.Key === k.Key);
      if (fresh) {
        const row = [...catalog.querySelectorAll("[data-testid=tag-catalog-row]")].find((tr) => tr.dataset.key === k.Key);
        if (row) {
          row.querySelector("[data-testid=tag-catalog-users]").textContent = fmt(fresh.Users);
          row.querySelector("[data-testid=tag-catalog-values]").textContent = fmt(fresh.Values);
        }
        k = fresh;
      }
      renderValues(k, (r && r.Values) || []);
    }

    function renderValues(k, top) {
      const topSum = top.reduce((s, v) => s + v.Users, 0);
      // A user has one value per key and inbox, so the key's users split exactly among its values.
      const rest = Math.max(0, k.Users - topSum);
      const restValues = Math.max(0, k.Values - top.length);
      const total = Math.max(k.Users, topSum);
      const rows = top.map((v) =>
        h("tr", { testid: "tag-value-row", "data-value": v.Value },
          h("th", { scope: "row" },
            v.Value === "" ? h("span", { class: "muted", text: "(empty value)" }) : h("code", { text: v.Value })),
          h("td", { class: "num", testid: "tag-value-users", text: fmt(v.Users) }),
          h("td", { class: "num", text: pctText(v.Users, total) }),
          h("td", { class: "bar-cell" }, bar(v.Users, total))));
      if (rest > 0 || restValues > 0) {
        rows.push(h("tr", { testid: "tag-value-row", "data-other": "true", class: "other" },
          h("th", { scope: "row" },
            h("em", { text: `Other values (${fmt(restValues)} more distinct value${restValues === 1 ? "" : "s"})` })),
          h("td", { class: "num", testid: "tag-value-users", text: fmt(rest) }),
          h("td", { class: "num", text: pctText(rest, total) }),
          h("td", { class: "bar-cell" }, bar(rest, total, "rest"))));
      }
      put(values,
        h("h3", { text: `Values of ${k.Key}` }),
        h("p", { testid: "tag-values-summary" },
          `${fmt(k.Users)} user${k.Users === 1 ? "" : "s"} of inbox ${inbox} have ${k.Key}, with ${fmt(k.Values)} distinct value${k.Values === 1 ? "" : "s"}`,
          top.length < k.Values ? `; the ${top.length} most common are shown, the rest summed as other values.` : "."),
        top.length === 0
          ? h("p", { class: "empty", text: "No users have this key any more." })
          : h("div", { class: "scroll" },
              h("table", { class: "value-chart" },
                h("caption", { class: "sr-only", text: `Users per value of ${k.Key}, most users first` }),
                h("thead", {}, h("tr", {},
                  h("th", { scope: "col", text: "Value" }),
                  h("th", { scope: "col", class: "num", text: "Users" }),
                  h("th", { scope: "col", class: "num", text: "Share" }),
                  h("th", { scope: "col" }, h("span", { class: "sr-only", text: "Bar" })))),
                h("tbody", {}, rows))));
    }

    load();
    return () => ac.abort();
  },
};
