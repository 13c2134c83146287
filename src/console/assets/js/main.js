// The console's shell: sign-in, the app and inbox choice, the screens and sign-out.
// Each screen is a module whose default export is { id, title, mount(root, ctx) } and
// mount may return a function that undoes it (stops timers, aborts long polls).

import { client } from "./api.js";
import { h, put } from "./ui.js";
import apps from "./apps.js";
import users from "./users.js";
import tags from "./tags.js";
import audience from "./audience.js";
import broadcasts from "./broadcasts.js";
import events from "./events.js";

const SCREENS = [apps, users, tags, audience, broadcasts, events];
const $ = (id) => document.getElementById(id);

let ctx = null;
let unmount = null;

function signinError(err) {
  const box = $("signin-form").querySelector("[data-testid=signin-error]");
  put(box, h("strong", { text: err.code || "Error" }), err.codeN ? ` ${err.codeN}` : "", ": ", err.message || String(err));
  box.hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const ak = $("signin-access-key").value.trim();
  const skInput = $("signin-secret-key");
  const region = $("signin-region").value.trim() || "cn-north-1";
  const submit = event.submitter || $("signin-form").querySelector("button[type=submit]");
  const box = $("signin-form").querySelector("[data-testid=signin-error]");
  box.hidden = true;
  if (!ak || !skInput.value) {
    signinError({ code: "MissingParameter", message: "enter both the access key and the secret key" });
    return;
  }
  submit.disabled = true;
  const api = client(ak, skInput.value, region);
  try {
    const result = await api.call("ListApps", {});
    skInput.value = "";
    start(api, result);
  } catch (e) {
    api.forget();
    signinError(e);
  } finally {
    submit.disabled = false;
  }
}

function start(api, listed) {
  const listeners = new Set();
  ctx = {
    api,
    role: listed.Role,
    canWrite: listed.Role !== "read",
    apps: listed.Apps,
    appId: () => Number($("app-select").value),
    inbox: () => {
      const n = Number($("inbox-select").value);
      return Number.isInteger(n) && n >= 0 ? n : 0;
    },
    /** The audience the builder holds, as the filter part of a CountAudience body. */
    shared: { filter: {} },
    /** Re-reads ListApps (users, broadcasts today) and returns the chosen app's row. */
    async refreshApps() {
      const r = await api.call("ListApps", {});
      ctx.apps = r.Apps;
      return ctx.app();
    },
    app: () => ctx.apps.find((a) => a.AppId === ctx.appId()),
    status(text) {
      $("status").textContent = text;
    },
    listeners,
  };
  const select = $("app-select");
  put(select, listed.Apps.map((a) => h("option", { value: String(a.AppId), text: String(a.AppId) })));
  $("signed-in-as").textContent = `${api.accessKey} · ${listed.Role}`;
  $("signin").hidden = true;
  $("shell").hidden = false;
  show(screenFromHash());
}

function screenFromHash() {
  const id = location.hash.replace(/^#/, "");
  return SCREENS.find((s) => s.id === id) || SCREENS[0];
}

function show(screen) {
  if (!ctx) return;
  if (unmount) unmount();
  unmount = null;
  for (const b of $("nav").querySelectorAll("button")) {
    if (b.dataset.screen === screen.id) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  const root = put($("main"), h("h2", { text: screen.title }));
  document.title = `${screen.title} · tagcast console`;
  const section = h("div", { class: "screen", testid: `screen-${screen.id}` });
  root.append(section);
  if (ctx.apps.length === 0 && screen.id !== "apps") {
    section.append(h("p", { class: "empty", text: "This account has no apps." }));
    return;
  }
  unmount = screen.mount(section, ctx) || null;
}

function signOut() {
  if (unmount) unmount();
  unmount = null;
  if (ctx) ctx.api.forget();
  ctx = null;
  $("main").replaceChildren();
  $("app-select").replaceChildren();
  $("signin-access-key").value = "";
  $("signin-secret-key").value = "";
  $("shell").hidden = true;
  $("signin").hidden = false;
  history.replaceState(null, "", location.pathname);
  $("signin-access-key").focus();
}

function init() {
  put($("nav"), SCREENS.map((s) =>
    h("li", {}, h("button", {
      type: "button",
      testid: `nav-${s.id}`,
      "data-screen": s.id,
      onclick: () => {
        history.replaceState(null, "", `#${s.id}`);
        show(s);
        $("main").focus();
      },
    }, s.title))));
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("app-select").addEventListener("change", () => show(screenFromHash()));
  $("inbox-select").addEventListener("change", () => show(screenFromHash()));
  window.addEventListener("hashchange", () => show(screenFromHash()));
  $("signin-access-key").focus();
}

init();
