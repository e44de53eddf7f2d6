#!/usr/bin/env bash
# Fuzzes profile-edge for a bounded time per target (issue 9, point 4).
#
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 60 s for each of config ids batch_body event_body tier_codec
# post_shape, one after another (one fuzzer process at a time). Needs the
# nightly toolchain; installs cargo-fuzz if missing. Seeds (seeds/<target>,
# plus config/*.toml for `config`) are copied into corpus/<target>, which
# grows across runs; crashes go to artifacts/<target>/, logs to logs/.
# Exits non-zero if a build fails or any target finds a crash.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target/fuzz),
# CARGO_BUILD_JOBS (default 1), FUZZ_SANITIZER (default none; "address"
# for ASan, slower), FUZZ_NICE (default 10).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
all_targets=(config ids batch_body event_body tier_codec post_shape backplane_message)

secs="${1:-60}"
[ $# -gt 0 ] && shift
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    if [[ ! " ${all_targets[*]} " =~ " $t " ]]; then
        echo "unknown target $t; targets: ${all_targets[*]}" >&2
        exit 2
    fi
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/fuzz}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-none}"
nice_cmd=(nice -n "${FUZZ_NICE:-10}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    "${nice_cmd[@]}" cargo install cargo-fuzz --locked || exit 1
fi

echo "== building fuzz targets (sanitizer: $sanitizer, target dir: $CARGO_TARGET_DIR)"
# Release with debug assertions and overflow checks (-a).
(cd "$root" && "${nice_cmd[@]}" cargo +nightly fuzz build --fuzz-dir tests/fuzz -s "$sanitizer" -a) || {
    echo "build failed" >&2
    exit 1
}
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bindir="$CARGO_TARGET_DIR/$triple/release"

dict_for() {
    case "$1" in
        config) echo "$here/dicts/toml.dict" ;;
        ids | batch_body | event_body | post_shape) echo "$here/dicts/json.dict" ;;
        *) echo "" ;;
    esac
}

mkdir -p "$here/logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="$here/corpus/$t"
    artifacts="$here/artifacts/$t"
    log="$here/logs/$t.log"
    mkdir -p "$corpus" "$artifacts"
    cp -n "$here/seeds/$t"/* "$corpus"/ 2>/dev/null
    [ "$t" = config ] && cp -n "$root"/config/*.toml "$corpus"/ 2>/dev/null
    marker="$(mktemp)"
    dict="$(dict_for "$t")"
    args=(-max_total_time="$secs" -timeout=30 -print_final_stats=1 -artifact_prefix="$artifacts/")
    [ -n "$dict" ] && args+=(-dict="$dict")
    echo "== $t: ${secs}s, corpus $(ls "$corpus" | wc -l) files"
    # Run from the repo root: configs name files (plugins/dist/...) relative to it.
    (cd "$root" && "${nice_cmd[@]}" "$bindir/$t" "${args[@]}" "$corpus") >"$log" 2>&1
    rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
    found="$(find "$artifacts" -type f -newer "$marker" | sort)"
    rm -f "$marker"
    # libFuzzer's own corpus count (files in corpus/ also keep inputs it
    # has since replaced with smaller ones).
    corp="$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
    size="${corp:-?} ($(ls "$corpus" | wc -l) files)"
    if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
        failed=1
        status="CRASH (exit $rc)"
        echo "   crash artifact(s): ${found:-none written}; log: $log"
        grep -m1 -B2 -A12 -E "panicked|ERROR: libFuzzer|==ERROR" "$log" | sed 's/^/   | /'
    else
        status="clean"
    fi
    echo "   ${done_line:-no DONE line}"
    summary+=("$(printf '%-11s %-18s executions=%-10s exec/s=%-7s corpus=%s' "$t" "$status" "${execs:-?}" "${rate:-?}" "$size")")
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
