#!/usr/bin/env bash
# Where the unit daemon's heap is at its peak during a cold sync: the daemon runs under
# heaptrack, built with glibc's malloc (the `system-allocator` feature; heaptrack cannot see
# mimalloc) into its own target folder, so the release binaries the other benchmarks use are
# untouched.
#
#   tests/benches/heap.sh [PATIENTS]      (default 100000; needs heaptrack: apt-get install heaptrack)
#   OUT=/tmp/heap                         heaptrack writes $OUT.PATIENTS.zst (default target/heap)
#
# Prints heaptrack's peak consumers; compare two sizes with
#   heaptrack_print -f F --flamegraph-cost-type peak -F stacks.txt
# (BENCHMARKS.md, issue 17 eleventh step, did that for 100,000 and 909,090).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
OUT=${OUT:-$PWD/target/heap}
command -v heaptrack >/dev/null || { echo "need heaptrack (apt-get install heaptrack)"; exit 1; }
command -v zstd >/dev/null || { echo "need zstd (heaptrack writes .gz without it; apt-get install zstd)"; exit 1; }
cargo build --release --workspace --bins -q
cargo build --release -q -p edge-daemon --features system-allocator --target-dir target/heaptrack
# shellcheck source=tests/benches/unit-setup.sh
source tests/benches/unit-setup.sh
hub_ingest_and_serve
rm -f "$OUT.$N.zst"
start_unit "$PWD/target/heaptrack/release/edge-daemon" heaptrack -o "$OUT.$N"
# UNIT is heaptrack's wrapper; the daemon is its child (also stopped at exit if this fails).
DAEMON=
for _ in $(seq 1 100); do DAEMON=$(pgrep -f "^$PWD/target/heaptrack/release/edge-daemon run" || true); [ -n "$DAEMON" ] && break; sleep 0.1; done
[ -n "$DAEMON" ] || { echo "bench: the daemon did not start under heaptrack"; exit 1; }
PIDS+=("$DAEMON")
t0=$SECONDS
wait_ready
echo "bench: $N records, searchable, after $(( SECONDS - t0 )) s under heaptrack" >&2
# Stop the daemon itself so that heaptrack writes its data, then wait for the wrapper.
kill -INT "$DAEMON"
wait "$UNIT" 2>/dev/null || true
heaptrack_print -f "$OUT.$N.zst" --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 --peak-limit 12 -s 0 2>/dev/null | sed -n 1,120p
