// Screen: Users (API.md §5): look a user up by UserId (BatchGetUser, in the chosen inbox),
// register or unregister it, and set or delete one of its tags (BatchUpdateUserTags).
import {
  h, put, field, errorBox, busy, confirmStep, readNote, loading, userIdFromText, inputError, timeEl,
} from "./ui.js";

/**
 * The last UserId looked up, and by which key: shown again when the screen is re-mounted
 * (app or inbox changed), not after signing in with another key.
 */
let last = { key: "", id: "" };

/** A FailedInfos entry as an error for errorBox (HTTP 200 with a per-user failure). */
function failed(result) {
  const f = result && Array.isArray(result.FailedInfos) ? result.FailedInfos[0] : null;
  if (!f) return null;
  return Object.assign(new Error(f.Message || "the user's change failed"), { code: f.Code || "Failed" });
}

function profileList(user, idText) {
  const ext = user.Ext && typeof user.Ext === "object" ? Object.entries(user.Ext) : [];
  const row = (name, value, testid) =>
    [h("dt", { text: name }), h("dd", { testid }, value)];
  return h("dl", { class: "profile", testid: "user-profile" },
    row("UserId", h("span", { class: "mono", text: idText }), "profile-user-id"),
    row("NickName", user.NickName ? user.NickName : h("span", { class: "muted", text: "(empty)" }), "profile-nickname"),
    row("Portrait", user.Portrait ? user.Portrait : h("span", { class: "muted", text: "(empty)" }), "profile-portrait"),
    row("Ext", ext.length
      ? h("ul", { class: "ext" }, ext.map(([k, v]) => h("li", {}, h("code", { text: k }), " = ", h("code", { text: v }))))
      : h("span", { class: "muted", text: "(none)" }), "profile-ext"),
    row("IsRobot", user.IsRobot ? "yes" : "no", "profile-is-robot"),
    row("CreateTime", timeEl(user.CreateTime), "profile-create-time"),
    row("ModifyTime", timeEl(user.ModifyTime), "profile-modify-time"));
}

export default {
  id: "users",
  title: "Users",
  mount(root, ctx) {
    const ac = new AbortController();
    const { signal } = ac;
    let token = 0; // the current lookup; older answers are dropped

    const search = h("input", {
      testid: "user-search", name: "user-id", inputmode: "numeric", autocomplete: "off",
      spellcheck: "false", placeholder: "e.g. 10001",
      value: last.key === ctx.api.accessKey ? last.id : "",
    });
    const submit = h("button", { type: "submit", class: "primary", testid: "user-search-submit" }, "Look up");
    const searchErrors = errorBox("user-search-error");
    const form = h("form", { class: "panel", role: "search", "aria-label": "Look a user up", novalidate: true },
      h("div", { class: "row" },
        field("UserId", search, `Looks the user up in app ${ctx.appId()}, inbox ${ctx.inbox()}.`),
        submit),
      searchErrors);
    const result = h("div", { class: "user-result", testid: "user-result", "aria-live": "polite" });
    root.append(form, result);

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      lookup();
    });

    async function lookup() {
      let id;
      try {
        id = userIdFromText(search.value);
      } catch (err) {
        token++;
        result.replaceChildren();
        searchErrors.show(err);
        search.focus();
        return;
      }
      searchErrors.clear();
      last = { key: ctx.api.accessKey, id: id.text };
      const mine = ++token;
      put(result, loading(`Looking up user ${id.text}…`));
      const answer = await busy(submit, searchErrors, () => read(id));
      if (mine !== token || signal.aborted) return;
      if (answer === undefined) {
        result.replaceChildren();
        return;
      }
      render(id, answer);
    }

    /** BatchGetUser for one id: the user, or null when it is not registered. */
    async function read(id) {
      const r = await ctx.api.call("BatchGetUser",
        { AppId: ctx.appId(), UserIds: [id.json], InboxType: ctx.inbox() }, { signal });
      const users = (r && r.Users) || [];
      return users.length ? users[0] : null;
    }

    function render(id, user) {
      if (user) renderUser(id, user);
      else renderMissing(id);
    }

    function renderMissing(id) {
      const errors = errorBox("user-register-error");
      const register = h("button", {
        type: "button", class: "primary", testid: "user-register", disabled: !ctx.canWrite,
      }, "Register");
      const actions = h("div", { class: "actions" });
      register.addEventListener("click", async () => {
        errors.clear();
        const ok = await confirmStep(actions,
          `Register user ${id.text} in app ${ctx.appId()} (empty profile, no tags)?`,
          { testid: "user-register-confirm", yes: "Register" });
        if (!ok || signal.aborted) return register.focus();
        const mine = token;
        const done = await busy(register, errors, async () => {
          const r = await ctx.api.call("RegisterUsers",
            { AppId: ctx.appId(), Users: [{ UserId: id.json }] }, { signal });
          const f = failed(r);
          if (f) throw f;
          return read(id);
        });
        if (done === undefined || mine !== token || signal.aborted) return;
        render(id, done);
        ctx.status?.(`Registered user ${id.text}.`);
      });
      put(result, h("section", { class: "panel", testid: "user-missing", "aria-label": `User ${id.text}` },
        h("p", { class: "not-registered", testid: "user-not-registered" },
          h("strong", { text: `User ${id.text} is not registered` }), ` in app ${ctx.appId()}.`),
        readNote(ctx, "registering a user"),
        h("div", { class: "row" }, register),
        actions, errors));
    }

    function renderUser(id, user) {
      const profileBox = h("div", {}, profileList(user, id.text));
      const tagsList = h("ul", { class: "chips", testid: "user-tags", "aria-label": `Tags in inbox ${ctx.inbox()}` });
      const tagsEmpty = h("p", { class: "empty", testid: "user-tags-empty", text: `No tags in inbox ${ctx.inbox()}.` });
      const tagsHint = h("p", { class: "hint", text: "Choose a tag to copy it into the editor." });

      const key = h("input", { testid: "tag-key", name: "tag-key", autocomplete: "off", spellcheck: "false" });
      const value = h("input", { testid: "tag-value", name: "tag-value", autocomplete: "off", spellcheck: "false" });
      const set = h("button", { type: "submit", class: "primary", testid: "tag-set", disabled: !ctx.canWrite }, "Set tag");
      const del = h("button", { type: "button", testid: "tag-delete", disabled: !ctx.canWrite }, "Delete tag");
      const tagErrors = errorBox("tag-error");
      const tagDone = h("p", { class: "done", role: "status", testid: "tag-done" });

      const fillTags = (u) => {
        const tags = Array.isArray(u.Tags) ? u.Tags : [];
        put(tagsList, tags.map((t) => {
          const i = t.indexOf(":");
          const k = i < 0 ? t : t.slice(0, i);
          const v = i < 0 ? "" : t.slice(i + 1);
          return h("li", {}, h("button", {
            type: "button", class: "chip", testid: "user-tag", "data-key": k, title: "Edit this tag",
            onclick: () => {
              key.value = k;
              value.value = v;
              value.focus();
            },
          }, t));
        }));
        tagsEmpty.hidden = tags.length > 0;
        tagsHint.hidden = tags.length === 0;
      };
      fillTags(user);

      const change = async (button, op) => {
        tagDone.textContent = "";
        const k = key.value;
        if (k === "") {
          tagErrors.show(inputError("enter the tag's key", "MissingParameter"));
          key.focus();
          return;
        }
        const tags = { [k]: op === 0 ? value.value : "" };
        const mine = token;
        const fresh = await busy(button, tagErrors, async () => {
          const r = await ctx.api.call("BatchUpdateUserTags", {
            AppId: ctx.appId(), InboxType: ctx.inbox(), UserTags: [{ UserId: id.json, Tags: tags }], Op: op,
          }, { signal });
          const f = failed(r);
          if (f) throw f;
          return read(id);
        });
        if (fresh === undefined || mine !== token || signal.aborted) return;
        if (!fresh) return renderMissing(id);
        put(profileBox, profileList(fresh, id.text));
        fillTags(fresh);
        tagDone.textContent = op === 0 ? `Set ${k}:${value.value}.` : `Deleted ${k}.`;
        button.focus();
      };
      // The disabled state is restored by busy(); read keys keep the buttons disabled.
      const editor = h("form", { class: "tag-editor", "aria-label": "Set or delete one tag", novalidate: true },
        h("div", { class: "row" },
          field("Tag key", key),
          field("Tag value", value),
          set, del),
        tagErrors, tagDone);
      editor.addEventListener("submit", (e) => {
        e.preventDefault();
        // A read key's buttons are disabled; should a call be made anyway, the server
        // refuses it and the refusal shows here (the role is enforced by the server).
        change(set, 0);
      });
      del.addEventListener("click", () => change(del, 1));

      const unregErrors = errorBox("user-unregister-error");
      const unregister = h("button", {
        type: "button", class: "danger", testid: "user-unregister", disabled: !ctx.canWrite,
      }, "Unregister");
      const unregActions = h("div", { class: "actions" });
      unregister.addEventListener("click", async () => {
        unregErrors.clear();
        const ok = await confirmStep(unregActions,
          `Unregister user ${id.text} from app ${ctx.appId()}? Its profile and its tags in every inbox are removed.`,
          { testid: "user-unregister-confirm", yes: "Unregister", danger: true });
        if (!ok || signal.aborted) return unregister.focus();
        const mine = token;
        const done = await busy(unregister, unregErrors, async () => {
          const r = await ctx.api.call("UnRegisterUsers", { AppId: ctx.appId(), UserIds: [id.json] }, { signal });
          const f = failed(r);
          if (f) throw f;
          return true;
        });
        if (!done || mine !== token || signal.aborted) return;
        renderMissing(id);
        ctx.status?.(`Unregistered user ${id.text}.`);
      });

      put(result, h("section", { class: "panel", testid: "user-found", "aria-label": `User ${id.text}` },
        h("h3", { text: `User ${id.text}` }),
        readNote(ctx, "changing a user"),
        profileBox,
        h("h4", { text: `Tags in inbox ${ctx.inbox()}` }),
        tagsList, tagsEmpty, tagsHint,
        editor,
        h("div", { class: "row danger-zone" }, unregister),
        unregActions, unregErrors));
    }

    if (search.value) lookup();
    return () => ac.abort();
  },
};
