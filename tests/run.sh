#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls exactly this).
# Does all set-up a fresh machine needs, then checks formatting and lints,
# builds the plugins, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (tests start their own on a free port)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

echo "==> wasm targets"
rustup target add wasm32-wasip2 wasm32-unknown-unknown

echo "==> plugins"
bash plugins/build.sh

echo "==> cargo fmt"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --release --target wasm32-wasip2 -- -D warnings)

echo "==> release builds the README commands use"
# tests/readme.rs runs the README's commands as written, `cargo run
# --release -- demo` and the policy_cost example among them; built here,
# they compile nothing inside the suite. (Two invocations: the example
# enables dev-dependency features that the binary alone does not.)
cargo build --release -p profile-edge
cargo build --release -p profile-edge --example policy_cost

echo "==> tests"
# The guests' shared glue (post-shape) is plain Rust: its unit tests run on
# the host.
(cd plugins && cargo test -p post-shape)
cargo test --workspace
