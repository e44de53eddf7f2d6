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
