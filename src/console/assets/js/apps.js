// Screen: Apps (API.md §10 ListApps): the account's apps with their users and today's
// broadcasts against the daily quota, the key's role, and a way to choose an app.
import { h, put, fmt, errorBox, loading } from "./ui.js";

function quotaBar(today, perDay) {
  const fill = h("span", {});
  const share = perDay > 0 ? Math.min(1, today / perDay) : 0;
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  if (share >= 1) fill.className = "fail";
  return h("div", { class: "bar quota-bar", "aria-hidden": "true" }, fill);
}

/** The app just chosen here: its button gets the focus back once the screen is re-mounted. */
let refocus = null;

function chooseApp(appId) {
  const select = document.getElementById("app-select");
  if (!select) return;
  refocus = appId;
  select.value = String(appId);
  select.dispatchEvent(new Event("change", { bubbles: true }));
}

function table(ctx) {
  const current = ctx.appId();
  return h("div", { class: "scroll" },
    h("table", { class: "apps", testid: "app-list" },
      h("caption", { class: "sr-only", text: "The apps of this account" }),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col", text: "AppId" }),
        h("th", { scope: "col", class: "num", text: "Users" }),
        h("th", { scope: "col", text: "Broadcasts today / per day" }),
        h("th", { scope: "col" }, h("span", { class: "sr-only", text: "Choose" })))),
      h("tbody", {}, ctx.apps.map((a) => {
        const chosen = a.AppId === current;
        return h("tr", { testid: "app-row", "data-app-id": String(a.AppId), class: chosen ? "current" : null },
          h("th", { scope: "row", class: "mono", text: String(a.AppId) }),
          h("td", { class: "num", testid: "app-users", text: fmt(a.Users) }),
          h("td", { testid: "app-broadcasts" },
            h("div", { class: "quota" },
              h("span", { class: "quota-text", text: `${fmt(a.BroadcastsToday)} / ${fmt(a.BroadcastsPerDay)}` }),
              quotaBar(a.BroadcastsToday, a.BroadcastsPerDay))),
          h("td", {},
            chosen
              ? h("button", { type: "button", testid: "app-choose", "aria-pressed": "true",
                  "aria-label": `App ${a.AppId} (chosen)`, onclick: () => chooseApp(a.AppId) }, "Chosen")
              : h("button", { type: "button", testid: "app-choose", "aria-pressed": "false",
                  "aria-label": `Choose app ${a.AppId}`, onclick: () => chooseApp(a.AppId) }, "Choose")));
      }))));
}

export default {
  id: "apps",
  title: "Apps",
  mount(root, ctx) {
    const ac = new AbortController();
    const role = h("p", { class: "role", testid: "apps-role" },
      "Signed in with key ", h("code", { text: ctx.api.accessKey }), ", role ",
      h("strong", { testid: "key-role", text: ctx.role }), ": ",
      ctx.canWrite ? "every Action." : "reads only (writes need an admin key).");
    const errors = errorBox("apps-error");
    const body = h("div", { class: "apps-body" }, loading("Loading the apps…"));
    const refresh = h("button", { type: "button", testid: "apps-refresh", onclick: () => load() }, "Refresh");
    root.append(role, h("div", { class: "row" }, refresh), errors, body);

    const render = () => {
      if (!ctx.apps || ctx.apps.length === 0) {
        put(body, h("p", { class: "empty", testid: "apps-empty", text: "This account has no apps." }));
      } else {
        put(body, table(ctx));
        if (refocus !== null) {
          body.querySelector(`[data-testid=app-row][data-app-id="${refocus}"] [data-testid=app-choose]`)?.focus();
          refocus = null;
        }
      }
    };

    async function load() {
      errors.clear();
      refresh.disabled = true;
      refresh.setAttribute("aria-busy", "true");
      try {
        const r = await ctx.api.call("ListApps", {}, { signal: ac.signal });
        ctx.apps = r.Apps || [];
        render();
      } catch (e) {
        if (e && e.name === "AbortError") return;
        errors.show(e);
        render();
      } finally {
        refresh.disabled = false;
        refresh.removeAttribute("aria-busy");
      }
    }
    load();
    return () => ac.abort();
  },
};
