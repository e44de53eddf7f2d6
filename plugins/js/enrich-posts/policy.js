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

/**
 * Writes `field` into every post of `body` (see the file comment), the way
 * the Rust policy's `post-shape` does: over the field's old value in every
 * occurrence when a post has it, else appended right after the post's last
 * entry (or inside an empty post); every other byte stays as sent.
 */
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
  const edits = [];
  const post = (at, list) =>
    postEdits(body, at, list, field, keyJson, snapshots, edits);
  if (has("posts")) {
    // Every occurrence of a repeated key is written, so the body reads the
    // same whichever one a client keeps.
    for (const e of top) {
      if (e.key === "posts" && body.charCodeAt(e.from) === 0x5b) {
        for (const [a] of elements(body, e.from)) {
          if (body.charCodeAt(a) === 0x7b) {
            post(a, entries(body, a));
          }
        }
      }
    }
  } else if (has("post")) {
    for (const e of top) {
      if (e.key === "post" && body.charCodeAt(e.from) === 0x7b) {
        post(e.from, entries(body, e.from));
      }
    }
  } else if (has("userId")) {
    post(start, top); // a single post is the body itself
  } else {
    return body; // anything else passes unchanged
  }
  let out = "";
  let at = 0;
  for (const [from, to, text] of edits) {
    out += body.slice(at, from) + text;
    at = to;
  }
  return out + body.slice(at);
}

/** The edits that write `field` into the post object at `at`. */
function postEdits(text, at, list, field, keyJson, snapshots, edits) {
  let author = null;
  for (let i = list.length - 1; i >= 0; i--) {
    if (list[i].key === "userId") {
      const v = JSON.parse(text.slice(list[i].from, list[i].to));
      author = typeof v === "string" ? v : null;
      break;
    }
  }
  const snap = (author !== null && snapshots.get(author)) || "null";
  const olds = list.filter((e) => e.key === field);
  if (olds.length > 0) {
    for (const e of olds) {
      edits.push([e.from, e.to, snap]);
    }
  } else if (list.length > 0) {
    const end = list[list.length - 1].to;
    edits.push([end, end, `,${keyJson}:${snap}`]);
  } else {
    const close = ws(text, at + 1); // the `}` of an empty post
    edits.push([close, close, `${keyJson}:${snap}`]);
  }
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
