#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls exactly this).
# Does all set-up a fresh machine needs, then checks formatting and lints,
# builds the plugins, and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh clone (CI) gains nothing from incremental compilation, whose
# cache alone grows to several GB; the disk is the limit there.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# redis-cli (Debian's redis-tools, a dependency of redis-server) creates
# and reshapes the test Redis Clusters.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "==> installing redis-server and redis-cli (tests start their own on free ports)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server redis-tools >/dev/null
fi
redis-server --version

# MongoDB-protocol tests use MONGODB_URI when it is set (a real replica
# set); otherwise they start SecantusDB, pinned, from a virtualenv here. It
# is GPL-2.0 and runs only as a separate process, never linked in.
SECANTUSDB_VERSION=0.7.0b3
if [ -z "${MONGODB_URI:-}" ]; then
    venv=target/secantus-venv
    if ! "$venv/bin/secantusd-py" --help >/dev/null 2>&1 ||
        [ "$(cat "$venv/.version" 2>/dev/null)" != "$SECANTUSDB_VERSION" ]; then
        echo "==> installing SecantusDB==$SECANTUSDB_VERSION into $venv"
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$venv"
        mkdir -p target
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "SecantusDB==$SECANTUSDB_VERSION"
        echo "$SECANTUSDB_VERSION" > "$venv/.version"
    fi
    echo "SecantusDB $SECANTUSDB_VERSION ($venv/bin/secantusd-py)"
else
    echo "MongoDB tests use MONGODB_URI"
fi

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

echo "==> done; target/ holds $(du -sh target 2>/dev/null | cut -f1)"
