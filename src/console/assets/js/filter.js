// The audience filter (API.md §6) as the console edits it: the filter part of a
// CountAudience body as JSON <-> an editable model.
//
// A filter part is `{}` (everyone), `{"Tags":["k:v",...],"TagOp":0|1}` (the vendor form) or
// `{"Filter":F}` (the tree: {"Tag":"k:v"}, {"Key":"k"}, {"And":[F,...]}, {"Or":[F,...]},
// {"Not":F}). The model:
//
//   { form: "all" }
//   { form: "tags", op: 0|1, tags: [{ key, value, bare }] }
//   { form: "tree", root: Node }
//   Node = { op: "And"|"Or", items: [Node] } | { op: "Not", item: Node }
//        | { op: "Tag", key, value, bare } | { op: "Key", key }
//
// `bare` remembers a "k" written without a colon (key k, value ""), so an untouched leaf
// is written back as it was read. Anything the builder cannot show (unknown fields, both
// forms, wrong kinds) makes `toModel` throw a CannotShow error naming the path; such text
// stays in the text area and the server judges it.

/** The filter fields of a request body; anything else is not part of a filter. */
export const FILTER_FIELDS = ["Tags", "TagOp", "Filter"];
/** The node operators of the tree. */
export const OPS = ["And", "Or", "Not", "Tag", "Key"];
/** Nesting the builder shows at most (the server allows 8: deeper trees are its to refuse). */
const MAX_BUILDER_DEPTH = 40;

/** Why the builder cannot show a filter (the text stays as it is). */
export class CannotShow extends Error {
  constructor(message) {
    super(message);
    this.name = "CannotShow";
  }
}

const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

function kind(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "an object";
  return `a ${typeof v}`;
}

/** Parses the text area's text: a JSON object, or throws an Error saying why not. */
export function parseJson(text) {
  let v;
  try {
    v = JSON.parse(text.trim() === "" ? "{}" : text);
  } catch (e) {
    throw new Error(`the filter is not valid JSON (${e.message})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new Error(`the filter must be a JSON object such as {} or {"Filter":{...}}, got ${kind(v)}`);
  }
  return v;
}

/** "k:v" -> key k, value v (split at the first colon); "k" -> key k, value "". */
export function splitTag(s) {
  const i = s.indexOf(":");
  return i < 0 ? { key: s, value: "", bare: true } : { key: s.slice(0, i), value: s.slice(i + 1), bare: false };
}

/** The "k:v" string of a tag (a bare "k" when it was read so and its value is still ""). */
export function joinTag(t) {
  return t.bare && t.value === "" ? t.key : `${t.key}:${t.value}`;
}

/** A filter part object -> the model. Throws CannotShow when the builder cannot show it. */
export function toModel(part) {
  if (part === null || typeof part !== "object" || Array.isArray(part)) {
    throw new CannotShow(`the filter must be an object, got ${kind(part)}`);
  }
  for (const k of Object.keys(part)) {
    if (!FILTER_FIELDS.includes(k)) {
      throw new CannotShow(`"${k}" is not a filter field (${FILTER_FIELDS.join(", ")})`);
    }
  }
  const tree = has(part, "Filter") && part.Filter !== null;
  const vendor = (has(part, "Tags") && part.Tags !== null) || (has(part, "TagOp") && part.TagOp !== null);
  if (tree && vendor) throw new CannotShow("the filter has both Tags/TagOp and Filter; use one of them");
  if (tree) return { form: "tree", root: node(part.Filter, "Filter", 1) };
  if (!vendor) return { form: "all" };
  const tags = part.Tags ?? [];
  if (!Array.isArray(tags)) throw new CannotShow(`Tags must be a list of "key:value" strings, got ${kind(tags)}`);
  const op = part.TagOp ?? 0;
  if (op !== 0 && op !== 1) throw new CannotShow(`TagOp must be 0 (any) or 1 (all), got ${JSON.stringify(op)}`);
  return {
    form: "tags",
    op,
    tags: tags.map((s, i) => {
      if (typeof s !== "string") throw new CannotShow(`Tags[${i}] must be a "key:value" string, got ${kind(s)}`);
      return splitTag(s);
    }),
  };
}

function node(v, path, depth) {
  if (depth > MAX_BUILDER_DEPTH) throw new CannotShow(`${path}: nested too deep for the builder`);
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new CannotShow(`${path}: expected an object with one member (${OPS.join(", ")}), got ${kind(v)}`);
  }
  const names = Object.keys(v);
  if (names.length !== 1) {
    throw new CannotShow(`${path}: expected an object with one member (${OPS.join(", ")}), got ${names.length} members`);
  }
  const op = names[0];
  const inner = v[op];
  const at = `${path}.${op}`;
  switch (op) {
    case "Tag":
      if (typeof inner !== "string") throw new CannotShow(`${at}: expected a "key:value" string, got ${kind(inner)}`);
      return { op, ...splitTag(inner) };
    case "Key":
      if (typeof inner !== "string") throw new CannotShow(`${at}: expected a key string, got ${kind(inner)}`);
      return { op, key: inner };
    case "And":
    case "Or":
      if (!Array.isArray(inner)) throw new CannotShow(`${at}: expected a list of filters, got ${kind(inner)}`);
      return { op, items: inner.map((c, i) => node(c, `${at}[${i}]`, depth + 1)) };
    case "Not":
      return { op, item: node(inner, at, depth + 1) };
    default:
      throw new CannotShow(`${path}: expected one of ${OPS.join(", ")}, got "${op}"`);
  }
}

/** The model -> the filter part object (what goes into the text area and the request). */
export function fromModel(model) {
  switch (model.form) {
    case "tags":
      return { Tags: model.tags.map(joinTag), TagOp: model.op };
    case "tree":
      return { Filter: nodeJson(model.root) };
    default:
      return {};
  }
}

function nodeJson(n) {
  switch (n.op) {
    case "Tag":
      return { Tag: joinTag(n) };
    case "Key":
      return { Key: n.key };
    case "Not":
      return { Not: nodeJson(n.item) };
    default:
      return { [n.op]: n.items.map(nodeJson) };
  }
}

/** A fresh leaf. */
export const newTag = (key = "", value = "") => ({ op: "Tag", key, value, bare: false });

/** The leaves (Tag, Key) of a node, in order. */
export function leaves(n) {
  if (n.op === "Tag" || n.op === "Key") return [n];
  if (n.op === "Not") return leaves(n.item);
  return n.items.flatMap(leaves);
}

/**
 * The node `n` turned into an `op` node, keeping what carries over: a leaf's key, a group's
 * items; a leaf or a group becomes the child of a new Not or the first item of a new group.
 */
export function convert(n, op) {
  if (n.op === op) return n;
  const leaf = n.op === "Tag" || n.op === "Key";
  switch (op) {
    case "Tag":
    case "Key": {
      const first = leaf ? n : leaves(n)[0];
      const key = first ? first.key : "";
      return op === "Tag"
        ? { op, key, value: first && first.op === "Tag" ? first.value : "", bare: false }
        : { op, key };
    }
    case "Not":
      return { op, item: n.op === "And" || n.op === "Or" || leaf ? n : n.item };
    default: // And, Or
      if (n.op === "And" || n.op === "Or") return { op, items: n.items };
      return { op, items: [n.op === "Not" ? n.item : n] };
  }
}

/** The model turned into another form, keeping the tags it can. */
export function convertForm(model, form) {
  if (model.form === form) return model;
  if (form === "all") return { form };
  if (form === "tags") {
    let tags = [];
    let op = 0;
    if (model.form === "tree") {
      const r = model.root;
      if (r.op === "Tag") tags = [r];
      else if ((r.op === "And" || r.op === "Or") && r.items.every((c) => c.op === "Tag")) {
        tags = r.items;
        op = r.op === "And" ? 1 : 0;
      }
    }
    tags = tags.map((t) => ({ key: t.key, value: t.value, bare: t.bare }));
    return { form, op, tags: tags.length ? tags : [{ key: "", value: "", bare: false }] };
  }
  // tree
  if (model.form === "tags" && model.tags.length) {
    const items = model.tags.map((t) => ({ op: "Tag", key: t.key, value: t.value, bare: t.bare }));
    return { form, root: items.length === 1 ? items[0] : { op: model.op === 1 ? "And" : "Or", items } };
  }
  return { form, root: { op: "And", items: [newTag()] } };
}
