#!/usr/bin/env bash
# Builds every guest policy of this workspace for wasm32-wasip2 (rustc emits
# a component directly) and copies each one where the proxy finds it:
# plugins/dist/<crate>.wasm, and the test suite's misbehaving ones (crates
# under testing/) to plugins/dist/testing/. The crates are discovered (cargo
# metadata: every cdylib member), so a new crate needs no edit here. A
# crate named `my-feed` becomes `my_feed.wasm` (rustc writes `-` as `_`).
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2
mkdir -p dist/testing
# One line per cdylib member: "<built file>\t<copy in dist/>".
cargo metadata --format-version 1 --no-deps | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
built = os.path.join(meta["target_directory"], "wasm32-wasip2", "release")
for pkg in meta["packages"]:
    if not any("cdylib" in t["crate_types"] for t in pkg["targets"]):
        continue
    rel = os.path.relpath(os.path.dirname(pkg["manifest_path"]), meta["workspace_root"])
    dist = "dist/testing" if rel.split(os.sep)[0] == "testing" else "dist"
    name = pkg["name"].replace("-", "_") + ".wasm"
    print(os.path.join(built, name) + "\t" + os.path.join(dist, name))
' | while IFS=$'\t' read -r src dst; do
    # An unchanged file keeps its modification time, so that cargo does not
    # rebuild the proxy, which embeds the shipped policies, for nothing.
    cmp -s "$src" "$dst" || cp "$src" "$dst"
    echo "plugins: $dst ($(wc -c < "$dst") bytes)"
done

# The JavaScript example policy (js/enrich-posts), built with jco
# componentize when node and npm are present. node_modules is kept between
# runs (npm ci only when the lock changes), and the component is rebuilt
# only when its sources, the WIT or the lock changed (componentizing takes
# from seconds to a minute).
js=js/enrich-posts
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    stamp=$(cat "$js/package.json" "$js/package-lock.json" "$js"/*.js wit/*.wit | sha256sum | cut -d' ' -f1)
    lock=$(sha256sum < "$js/package-lock.json" | cut -d' ' -f1)
    if [ "$(cat "$js/node_modules/.lock-sha256" 2>/dev/null)" != "$lock" ]; then
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock" > "$js/node_modules/.lock-sha256"
    fi
    if [ -f dist/enrich_posts_js.wasm ] && [ "$(cat "$js/.build-sha256" 2>/dev/null)" = "$stamp" ]; then
        echo "plugins: dist/enrich_posts_js.wasm up to date"
    else
        # --disable all: no WASI at all (no stdio, clocks, random, http), so
        # the component imports only the WIT `host` interface.
        (cd "$js" && node_modules/.bin/jco componentize policy.js --wit ../../wit \
            --world-name enrich-policy --disable all -o ../../dist/enrich_posts_js.wasm >/dev/null)
        echo "$stamp" > "$js/.build-sha256"
        echo "plugins: dist/enrich_posts_js.wasm ($(wc -c < dist/enrich_posts_js.wasm) bytes)"
    fi
else
    echo "plugins: skipped dist/enrich_posts_js.wasm (the JavaScript policy needs node and npm)"
fi
