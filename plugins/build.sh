#!/usr/bin/env bash
# Builds every guest policy for wasm32-wasip2 (rustc emits a component
# directly) and copies them where the proxy finds them: the shipped policies
# to plugins/dist/, the test suite's misbehaving ones to plugins/dist/testing/.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2
out=target/wasm32-wasip2/release
mkdir -p dist/testing
for name in enrich_posts invalidate_profile enrich_fields; do
    cp "$out/$name.wasm" "dist/$name.wasm"
    echo "plugins: dist/$name.wasm ($(wc -c < "dist/$name.wasm") bytes)"
done
for name in hostile_enrich hostile_invalidate wrong_version previous_wit; do
    cp "$out/$name.wasm" "dist/testing/$name.wasm"
done
echo "plugins: test fixtures in dist/testing/"

# The JavaScript example policy (js/enrich-posts), built with jco
# componentize when node and npm are present. node_modules is kept between
# runs (npm ci only when the lock changes), and the component is rebuilt
# only when its sources, the WIT or the lock changed: componentizing takes
# about a minute.
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
