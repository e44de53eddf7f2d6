#!/usr/bin/env bash
# Builds every guest policy in this workspace and copies the components to
# plugins/dist/, where the example configs and `profile-edge demo` find them.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p dist
members=$(sed -n '/^members/,/]/p' Cargo.toml | grep -o '"[^"]*"' | tr -d '"' || true)
if [ -z "$members" ]; then
    echo "plugins: no guest policies in the workspace yet; nothing to build"
    exit 0
fi
rustup target add wasm32-wasip2 >/dev/null
cargo build --release --target wasm32-wasip2
for m in $members; do
    name=$(basename "$m" | tr '-' '_')
    cp "target/wasm32-wasip2/release/$name.wasm" "dist/$name.wasm"
    echo "plugins: built dist/$name.wasm"
done
