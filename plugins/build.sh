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
