# Shared by the unit benchmarks (lan.sh, lan-ab.sh, heap.sh); sourced, not run. From the
# repository root, with N (patients) set: provisions a fleet, a hub and one enrolled vehicle unit
# on loopback in a temporary folder (removed at exit, with every process started here), and
# defines:
#   BIN T PIDS HUB_Q ADMIN LAN CERT KEY TOKEN      paths, addresses, the LAN certificate and key,
#                                                  one clinical shift token
#   hub_ingest_and_serve                           synth + ingest N patients, start the hub (HUB)
#   start_unit [DAEMON [WRAPPER...]]               start a daemon (UNIT; default $BIN/edge-daemon),
#                                                  WRAPPER words before it (e.g. heaptrack -o F)
#   stop_unit                                      stop it (SIGTERM, waited for)
#   wait_ready                                     until the unit holds N records, searchable
#   drained                                        until the unit's audit is all uploaded; prints
#                                                  the seconds that took
#   summ                                           wrk --latency output -> "req/s p50 p99 non2xx"
#   mint_tokens TOKENS PER_TOKEN                   $T/tokens.txt, $T/patients.txt (each token's own
#                                                  PER_TOKEN patients), $T/tokens.lua (wrk: a
#                                                  random token and one of its patients per
#                                                  request), $T/tokens-paced.lua (+ a random
#                                                  0-128 ms wait per connection)
# shellcheck shell=bash
BIN=$PWD/target/release
T=$(mktemp -d -t kerbside-lanbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
uport() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
HUB_Q=127.0.0.1:$(uport); ADMIN=127.0.0.1:$(port); LAN=127.0.0.1:$(port)
"$BIN/edge-provision" ca init --fleet "$T/fleet" >/dev/null 2>&1
"$BIN/edge-provision" hub --fleet "$T/fleet" --name 127.0.0.1 --listen "$HUB_Q" --admin "$ADMIN" --out "$T/hub" >/dev/null 2>&1
"$BIN/edge-provision" enrol --fleet "$T/fleet" --device-id LAS-AMB-BENCH --role vehicle --hub "$HUB_Q" --hub-name 127.0.0.1 --lan "$LAN" --out "$T/unit" >/dev/null 2>&1
# wrk's 64 connections stand for many tablets but all come from 127.0.0.1: raise the per-address
# in-flight limit (16 by default, for one tablet) so it is not what is measured.
sed -i 's/^max_requests_per_client = .*/max_requests_per_client = 128/' "$T/unit/edge.toml"
grep -q '^max_requests_per_client = 128' "$T/unit/edge.toml" || { echo "bench: could not raise max_requests_per_client"; exit 1; }
LAN_CERT=$(python3 -c 'import sys,tomllib;c=tomllib.load(open(sys.argv[1],"rb"))["lan"];print(c["cert"]);print(c["key"])' "$T/unit/edge.toml")
CERT=$(sed -n 1p <<<"$LAN_CERT"); KEY=$(sed -n 2p <<<"$LAN_CERT")
case "$CERT" in /*) ;; *) CERT=$T/unit/$CERT;; esac
case "$KEY" in /*) ;; *) KEY=$T/unit/$KEY;; esac
TOKEN=$("$BIN/edge-provision" token --fleet "$T/fleet" --staff-id 555000111222 --name "PARAMEDIC, Bench" --role clinical --device-id LAS-AMB-BENCH --hours 12 2>/dev/null | tail -1)

hub_ingest_and_serve() {
  echo "bench: synth + ingest $N patients..." >&2
  "$BIN/edge-hub" synth --patients "$N" --seed 7 --out "$T/synth.ndjson" >/dev/null 2>&1
  "$BIN/edge-hub" ingest --config "$T/hub/hub.toml" "$T/synth.ndjson" >/dev/null 2>&1
  "$BIN/edge-hub" serve --config "$T/hub/hub.toml" 2>"$T/hub.log" & HUB=$!; PIDS+=("$HUB")
  sleep 1
}

start_unit() {
  local daemon=${1:-$BIN/edge-daemon}
  shift || true
  "$@" "$daemon" run --config "$T/unit/edge.toml" 2>>"$T/unit.log" & UNIT=$!; PIDS+=("$UNIT")
}

stop_unit() {
  kill "$UNIT" 2>/dev/null || true
  wait "$UNIT" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$UNIT" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# The unit's status fields named, space-separated ("-" for one it lacks or cannot read).
unit_status() {
  curl -sk "https://$LAN/v1/status" | python3 -c 'import sys,json;d=json.load(sys.stdin);print(*(d.get(k,"-") for k in sys.argv[1:]))' "$@" 2>/dev/null || echo "-"
}

wait_ready() {
  local r="-"
  for _ in $(seq 1 1200); do
    r=$(unit_status records rebaselining caught_up)
    [ "$r" = "$N False True" ] && return 0
    sleep 1
  done
  echo "unit did not sync (records, rebaselining, caught_up: $r)"; exit 1
}

drained() {
  local t0=$SECONDS
  for _ in $(seq 1 300); do
    [ "$(unit_status audit_pending)" = 0 ] && { echo $(( SECONDS - t0 )); return; }
    sleep 1
  done
  echo "bench: the unit did not upload its audit backlog within 300 s" >&2; exit 1
}

summ() {
  awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} /Non-2xx/{bad=$NF} END{print r, p50, p99, bad+0}'
}

mint_tokens() {
  local tokens=$1 per=$2
  echo "bench: minting $tokens shift tokens..." >&2
  for _ in $(seq 1 "$tokens"); do
    "$BIN/edge-provision" token --fleet "$T/fleet" --staff-id 555000111222 --name "PARAMEDIC, Bench" --role clinical --device-id LAS-AMB-BENCH --hours 12 2>/dev/null | tail -1
  done > "$T/tokens.txt"
  python3 - "$T/synth.ndjson" "$(( tokens * per ))" > "$T/patients.txt" <<'PY'
import json, sys
want = int(sys.argv[2])
n = 0
for line in open(sys.argv[1]):
    for e in json.loads(line)["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Patient":
            print(r["identifier"][0]["value"]); n += 1
            break
    if n >= want:
        break
PY
  cat > "$T/tokens.lua" <<EOF
local tokens, patients = {}, {}
for line in io.lines("$T/tokens.txt") do tokens[#tokens + 1] = line end
for line in io.lines("$T/patients.txt") do patients[#patients + 1] = line end
local per = $per
math.randomseed(os.time())
request = function()
  local t = math.random(#tokens)
  local p = patients[((t - 1) * per + math.random(per) - 1) % #patients + 1]
  return wrk.format(nil, "/v1/patients/" .. p, {["Authorization"] = "Bearer " .. tokens[t]})
end
EOF
  # Pacing: each connection waits a random 0-128 ms (mean 64) after each answer, so the 64
  # connections arrive independently at ≈ 1,000 req/s in all, as tablets do. A fixed 64 ms kept
  # the connections in step after their first requests: the load was a burst of 64 requests
  # every 64 ms (BENCHMARKS.md, issue 17 tenth step).
  echo 'function delay() return math.random(0, 128) end' > "$T/pace.lua"
  cat "$T/tokens.lua" "$T/pace.lua" > "$T/tokens-paced.lua"
}
