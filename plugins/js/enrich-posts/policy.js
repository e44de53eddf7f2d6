// The default enrichment policy, in JavaScript: the same answers as the Rust
// `plugins/enrich-posts` (every post of a `posts` array, a notification's
// `post`, or a single post gets `userSnapshot` = {id, displayName,
// avatarUrl}, `null` for an author the Officer does not know).
//
// Like the Rust one, `enrich` splices each snapshot into the body's text
// instead of re-serialising the whole body: JSON.stringify would rewrite
// numbers (1.0 -> 1, ids above 2^53 rounded) in fields the policy never
// touches.
//
// Errors: a thrown string becomes the `err` of the WIT `result`.

/** `needed-ids`: the distinct authors of the body's posts, in order. */
function neededIds(body) {
  let doc;
  try {
    doc = JSON.parse(body);
  } catch (e) {
    throw `body is not a posts document: ${e.message}`;
  }
  if (!isObject(doc)) {
    throw "body is not a posts document: not a JSON object";
  }
  const ids = [];
  for (const post of postsOf(doc)) {
    const id = post.userId;
    if (typeof id === "string" && !ids.includes(id)) {
      ids.push(id);
    }
  }
  return ids;
}

/** `enrich`: the body with a snapshot written into every post. */
function enrich(body, profiles) {
  const snapshots = new Map();
  for (const p of profiles) {
    let f;
    try {
      f = JSON.parse(p.json);
    } catch (e) {
      throw `profile ${p.id}: ${e.message}`;
    }
    if (!isObject(f)) {
      throw `profile ${p.id}: not a JSON object`;
    }
    snapshots.set(
      p.id,
      JSON.stringify({
        id: p.id,
        displayName: stringOrNull(f.displayName),
        avatarUrl: stringOrNull(f.avatarUrl),
      }),
    );
  }
  return splice(body, "userSnapshot", snapshots);
}

export const enricher = { neededIds, enrich };

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function stringOrNull(v) {
  return typeof v === "string" ? v : null;
}

/** The post objects of a parsed body, whatever its shape. */
function postsOf(doc) {
  if (Object.hasOwn(doc, "posts")) {
    return Array.isArray(doc.posts) ? doc.posts.filter(isObject) : [];
  }
  if (Object.hasOwn(doc, "post")) {
    return isObject(doc.post) ? [doc.post] : [];
  }
  if (Object.hasOwn(doc, "userId")) {
    return [doc];
  }
  return [];
}

// ---- Splicing: the body is read as raw entries, never rebuilt. ----

/** Writes `field` into every post of `body` (see the file comment). */
function splice(body, field, snapshots) {
  try {
    JSON.parse(body); // the scanner below trusts valid JSON
  } catch (e) {
    throw `body is not a JSON object: ${e.message}`;
  }
  const start = ws(body, 0);
  if (body.charCodeAt(start) !== 0x7b) {
    throw "body is not a JSON object";
  }
  const top = entries(body, start);
  const has = (k) => top.some((e) => e.key === k);
  const keyJson = JSON.stringify(field);
  if (!has("posts") && !has("post")) {
    // A single post is the body itself; anything else passes unchanged.
    return has("userId")
      ? spliceEntries(body.trim(), top, field, keyJson, snapshots)
      : body;
  }
  const target = has("posts") ? "posts" : "post";
  const out = [];
  for (const e of top) {
    const raw = body.slice(e.from, e.to);
    let value = raw;
    if (e.key === target) {
      if (target === "post") {
        value = splicePost(raw, field, keyJson, snapshots);
      } else if (raw.charCodeAt(0) === 0x5b) {
        const posts = elements(raw, 0).map(([a, b]) =>
          splicePost(raw.slice(a, b), field, keyJson, snapshots),
        );
        value = `[${posts.join(",")}]`;
      } // `posts` that is not an array is left as it is.
    }
    out.push(`${JSON.stringify(e.key)}:${value}`);
  }
  return `{${out.join(",")}}`;
}

function splicePost(text, field, keyJson, snapshots) {
  if (text.charCodeAt(0) !== 0x7b) {
    return text; // not an object: nothing to enrich
  }
  return spliceEntries(text, entries(text, 0), field, keyJson, snapshots);
}

/** `text` is a JSON object whose entries are `list`. */
function spliceEntries(text, list, field, keyJson, snapshots) {
  let author = null;
  for (let i = list.length - 1; i >= 0; i--) {
    if (list[i].key === "userId") {
      const v = JSON.parse(text.slice(list[i].from, list[i].to));
      author = typeof v === "string" ? v : null;
      break;
    }
  }
  const snap = (author !== null && snapshots.get(author)) || "null";
  if (list.some((e) => e.key === field)) {
    // Replace, never duplicate: a full rewrite of this one post.
    const post = JSON.parse(text);
    post[field] = JSON.parse(snap);
    return JSON.stringify(post);
  }
  const inner = text.slice(0, text.length - 1).trimEnd();
  const sep = list.length > 0 ? "," : "";
  return `${inner}${sep}${keyJson}:${snap}}`;
}

// A minimal scanner over text already known to be valid JSON: it finds
// where values start and end; strings and numbers are skipped by regex
// (native code), only brackets and commas are walked in JS.

const WS = /[ \t\n\r]*/y;
const STRING = /"[^"\\]*(?:\\.[^"\\]*)*"/y;
const SCALAR = /[-+0-9.eE]+|true|false|null/y;

function ws(s, i) {
  WS.lastIndex = i;
  WS.test(s);
  return WS.lastIndex;
}

function skipString(s, i) {
  STRING.lastIndex = i;
  STRING.test(s);
  return STRING.lastIndex;
}

/** The end of the value starting at `i`. */
function skip(s, i) {
  const c = s.charCodeAt(i);
  if (c === 0x22) {
    return skipString(s, i);
  }
  if (c === 0x7b || c === 0x5b) {
    const close = c === 0x7b ? 0x7d : 0x5d;
    i = ws(s, i + 1);
    if (s.charCodeAt(i) === close) {
      return i + 1;
    }
    for (;;) {
      if (c === 0x7b) {
        i = ws(s, skipString(s, i)) + 1; // key and colon
        i = ws(s, i);
      }
      i = ws(s, skip(s, i));
      if (s.charCodeAt(i) !== 0x2c) {
        return i + 1; // the closing bracket
      }
      i = ws(s, i + 1);
    }
  }
  SCALAR.lastIndex = i;
  SCALAR.test(s);
  return SCALAR.lastIndex;
}

/** The entries of the object at `i`: decoded key and the value's span. */
function entries(s, i) {
  const out = [];
  i = ws(s, i + 1);
  if (s.charCodeAt(i) === 0x7d) {
    return out;
  }
  for (;;) {
    const keyEnd = skipString(s, i);
    const key = JSON.parse(s.slice(i, keyEnd));
    const from = ws(s, ws(s, keyEnd) + 1);
    const to = skip(s, from);
    out.push({ key, from, to });
    i = ws(s, to);
    if (s.charCodeAt(i) !== 0x2c) {
      return out;
    }
    i = ws(s, i + 1);
  }
}

/** The spans of the elements of the array at `i`. */
function elements(s, i) {
  const out = [];
  i = ws(s, i + 1);
  if (s.charCodeAt(i) === 0x5d) {
    return out;
  }
  for (;;) {
    const to = skip(s, i);
    out.push([i, to]);
    i = ws(s, to);
    if (s.charCodeAt(i) !== 0x2c) {
      return out;
    }
    i = ws(s, i + 1);
  }
}
