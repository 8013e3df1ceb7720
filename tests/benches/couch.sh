#!/usr/bin/env bash
# Cold sync beside a CouchDB-style peer, in the same run:
#   - Kerbside: the real hub → unit cold sync over QUIC (cargo bench --bench sync), and its
#     floor (the same bytes raw over one QUIC stream);
#   - pouchdb-server → pouchdb-server replication (the CouchDB replication protocol over HTTP,
#     both in memory) of the same summaries as JSON documents. Timed on a direct replication;
#     bytes on the wire counted on a second cold replication whose source URL is a
#     byte-counting TCP proxy (couch/tcpcount.py) in front of the source server. Loading the
#     source (_bulk_docs) goes straight to it, not through the proxy.
#
#   tests/benches/couch.sh [PATIENTS]     (default 100000; needs node/npm, installs pouchdb-server)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
command -v npm >/dev/null || { echo "need node and npm"; exit 1; }
(cd tests/benches/couch && { npm ci --no-audit --no-fund --ignore-scripts >/dev/null 2>&1 || npm install --no-audit --no-fund --ignore-scripts >/dev/null; })
cargo build --release --workspace --bins -q
BIN=$PWD/target/release
T=$(mktemp -d -t kerbside-couch.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
"$BIN/edge-hub" synth --patients "$N" --seed 7 --out "$T/synth.ndjson" >/dev/null 2>&1
"$BIN/kerbside-summaries" "$T/synth.ndjson" > "$T/docs.ndjson"
A=$(port); B=$(port); P=$(port)
ROOT=$PWD
PS=$ROOT/tests/benches/couch/node_modules/.bin/pouchdb-server
mkdir -p "$T/a" "$T/b"
(cd "$T/a" && exec "$PS" -m -p "$A" >/dev/null 2>&1) & PIDS+=($!)
(cd "$T/b" && exec "$PS" -m -p "$B" >/dev/null 2>&1) & PIDS+=($!)
python3 "$ROOT/tests/benches/couch/tcpcount.py" "$P" "$A" "$T/wire" & PROXY=$!; PIDS+=("$PROXY")
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$A/" >/dev/null && curl -s "http://127.0.0.1:$B/" >/dev/null && [ -s "$T/wire" ] && break; sleep 0.2; done
echo "bench: pouchdb-server replication of $N summaries (direct, then through the byte counter)..." >&2
COUCH=$(python3 - "$T/docs.ndjson" "$A" "$B" "$P" <<'PY'
import json, sys, time, urllib.request
docs, a, b, p = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def req(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=3600) as resp:
        return json.loads(resp.read())
# Load the source directly (not through the proxy).
req("PUT", f"http://127.0.0.1:{a}/summaries")
batch, n, size = [], 0, 0
for line in open(docs):
    batch.append(json.loads(line)); n += 1; size += len(line)
    if len(batch) == 1000:
        req("POST", f"http://127.0.0.1:{a}/summaries/_bulk_docs", {"docs": batch}); batch = []
if batch:
    req("POST", f"http://127.0.0.1:{a}/summaries/_bulk_docs", {"docs": batch})
def replicate(source):
    t = time.time()
    req("POST", f"http://127.0.0.1:{b}/_replicate", {"source": source, "target": "summaries", "create_target": True})
    secs = time.time() - t
    info = req("GET", f"http://127.0.0.1:{b}/summaries")
    assert info["doc_count"] == n, (info, n)
    return secs
# 1. timed: straight from the source server.
secs = replicate(f"http://127.0.0.1:{a}/summaries")
# 2. counted: a fresh target (so a cold replication again), source through the proxy.
req("DELETE", f"http://127.0.0.1:{b}/summaries")
psecs = replicate(f"http://127.0.0.1:{p}/summaries")
print(f"{n} {secs:.2f} {size/n:.0f} {psecs:.2f}")
PY
)
read -r cn cs cb cps <<<"$COUCH"
kill -TERM "$PROXY" 2>/dev/null || true
wait "$PROXY" 2>/dev/null || true
read -r up down conns < "$T/wire"
echo "bench: Kerbside cold sync of the same $N summaries..." >&2
SYNC=$(cargo bench -q -p kerbside-tests --bench sync -- "$N" 2>/dev/null)
ks=$(echo "$SYNC" | awk -F'|' '/cold sync hub → unit/{gsub(/[ s]/,"",$3); print $3}')
kr=$(echo "$SYNC" | awk -F'|' '/summaries per second/{gsub(/ /,"",$3); print $3}')
kb=$(echo "$SYNC" | awk -F'|' '/bytes on the wire/{gsub(/[ B]/,"",$3); print $3}')
# "| floor: the same 31.7 MB raw over one QUIC stream | 0.61 s (164000 summaries/s equivalent) |"
floor=$(echo "$SYNC" | awk -F'|' '/^\| floor:/{gsub(/^ +| +$/,"",$2); print $2}')
read -r fs fr < <(echo "$SYNC" | awk -F'|' '/^\| floor:/{split($3,w," "); sub(/^\(/,"",w[3]); print w[1], w[3]}')
kf=$(echo "$SYNC" | awk -F'|' '/cold sync ÷ floor/{gsub(/[ ×]/,"",$3); print $3}')
if [ -z "$ks" ] || [ -z "$kr" ] || [ -z "$kb" ] || [ -z "$floor" ] || [ -z "${fs:-}" ] || [ -z "${fr:-}" ] || [ -z "$kf" ]; then
  echo "could not parse the sync bench output:" >&2; echo "$SYNC" >&2; exit 1
fi
# Derived numbers, one line: time ratio, pouchdb rate, Kerbside total MB, pouchdb total MB,
# pouchdb B/summary, down MB, up MB, bytes ratio (total), bytes ratio (source → replicator only).
read -r ratio cr kmb pmb pb dmb umb bratio bratio_down < <(python3 - "$N" "$cs" "$cn" "$ks" "$kb" "$up" "$down" <<'PY'
import sys
n, cs, cn, ks, kb, up, down = sys.argv[1:]
n, cs, cn, ks, kb, up, down = int(n), float(cs), int(cn), float(ks), float(kb), int(up), int(down)
k = kb * n; p = up + down
mb = lambda b: f"{b/1e6:.2f}" if b < 1e7 else f"{b/1e6:.1f}"
print(f"{cs/ks:.1f}", round(cn / cs), mb(k), mb(p), f"{p/n:.0f}", mb(down), mb(up),
      f"{k/p:.3f}", f"{k/down:.3f}")
PY
)
echo
echo "Cold sync of $N summaries, loopback, same run"
echo
echo "| | time | summaries/s | bytes on the wire | notes |"
echo "| --- | --- | --- | --- | --- |"
echo "| Kerbside hub → unit (QUIC, mutual TLS, signed batches, sealed + fsync'd on the unit) | $ks s | $kr | ≈ $kmb MB ($kb B/summary; UDP payload received by the unit, hub → unit) | |"
echo "| pouchdb-server → pouchdb-server replication (CouchDB protocol, both in memory) | $cs s | $cr | $pmb MB both ways ($pb B/summary): $dmb MB source → replicator, $umb MB replicator → source | JSON documents of $cb B; responses gzip'd by pouchdb-server; bytes are TCP payload (HTTP headers + bodies) through a counting proxy in front of the source, on a second cold replication ($cps s through the proxy, $conns connections) |"
echo "| $floor | $fs s | $fr | | Kerbside cold sync = $kf × the floor |"
echo "| Kerbside ÷ pouchdb time | $ratio × faster | | | |"
echo "| bytes: Kerbside ÷ pouchdb | | | $bratio × (both ways); $bratio_down × (source → replicator only) | |"
