#!/usr/bin/env bash
# Two builds of the unit daemon, alternately, on one synced unit: the daemon's and the hub's CPU
# per lookup and the lookups per second in a closed loop, and the latency at ≈ 1,000 lookups/s
# paced. For before/after figures that the spread between separate lan.sh runs would hide.
#
#   tests/benches/lan-ab.sh A B [PATIENTS] [PAIRS]
#     A, B       edge-daemon binaries (copy one aside before rebuilding: cp target/release/
#                edge-daemon /tmp/edge-daemon.before)
#     PATIENTS   cached (default 100000); PAIRS alternations (default 3)
#   WRK_SECS=10  seconds measured per run (after 6 s of warm-up)
#
# One hub and one unit on loopback (tests/benches/unit-setup.sh), synced by A; then, PAIRS
# times, the daemon is stopped and restarted from A, then from B, on the same cache, warmed
# up, and measured with wrk (2 threads, 64 connections; 1,000 shift tokens × 15 patients each,
# as lan.sh): paced first (each connection waits a random 0-128 ms), once the warm-up's audit
# events are uploaded, then the closed loop. CPU is utime + stime from /proc, divided by the
# requests wrk completed.
set -euo pipefail
[ $# -ge 2 ] || { awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); N=${3:-100000}; PAIRS=${4:-3}; WRK_SECS=${WRK_SECS:-10}
[ -x "$A" ] && [ -x "$B" ] || { echo "A and B must be edge-daemon binaries"; exit 2; }
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "need wrk (apt-get install wrk)"; exit 1; }
cargo build --release --workspace --bins -q
# shellcheck source=tests/benches/unit-setup.sh
source tests/benches/unit-setup.sh
hub_ingest_and_serve
start_unit "$A"
wait_ready
mint_tokens 1000 15
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # daemon binary -> one table row
  stop_unit
  start_unit "$1"
  for _ in $(seq 1 100); do curl -sfk "https://$LAN/v1/status" >/dev/null && break; sleep 0.2; done
  wrk -t2 -c64 -d6s -s "$T/tokens.lua" "https://$LAN" >/dev/null
  drained >/dev/null
  local d0 h0 d1 h1 out n rps bad paced p50 p99
  read -r _ p50 p99 _ < <(wrk -t2 -c64 -d"$WRK_SECS"s --latency -s "$T/tokens-paced.lua" "https://$LAN" | summ)
  paced="$p50 / $p99"
  d0=$(cpu "$UNIT"); h0=$(cpu "$HUB")
  out=$(wrk -t2 -c64 -d"$WRK_SECS"s -s "$T/tokens.lua" "https://$LAN")
  d1=$(cpu "$UNIT"); h1=$(cpu "$HUB")
  n=$(awk '/requests in/{print $1}' <<<"$out"); rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  python3 -c "import sys,os;hz=os.sysconf('SC_CLK_TCK');n=int(sys.argv[4]);print(f'| {sys.argv[1]} | {float(sys.argv[5]):,.0f} | {(float(sys.argv[3])-float(sys.argv[2]))*1e6/hz/n:.0f} µs | {(float(sys.argv[7])-float(sys.argv[6]))*1e6/hz/n:.0f} µs | {sys.argv[9]} | {sys.argv[8]} |')" \
    "$2" "$d0" "$d1" "$n" "$rps" "$h0" "$h1" "${bad:-0}" "$paced"
}
echo
echo "Closed loop, $N cached, wrk 64 connections for $WRK_SECS s, alternating (A = $A, B = $B)"
echo
echo "| build | lookups/s | daemon CPU a lookup | hub CPU a lookup | paced ≈ 1,000/s: p50 / p99 | non-2xx (closed loop) |"
echo "| --- | --- | --- | --- | --- | --- |"
for _ in $(seq 1 "$PAIRS"); do measure "$A" A; measure "$B" B; done
