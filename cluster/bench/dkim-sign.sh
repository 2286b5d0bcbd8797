#!/usr/bin/env bash
# dkim-sign.sh — what DKIM signing at enqueue costs ingest: the same baton-load workload
# against a single node without keys, with one RSA-2048 key, and with an RSA-2048 and an
# Ed25519 key for the load's From domain (two signatures per message), variants
# alternated round by round so that machine drift hits all alike. Prints each run and the
# median ingest rate and p99 end-of-DATA→250 latency per variant.
#
#   cargo build --release -p batond -p baton-load
#   cluster/bench/dkim-sign.sh                       # N=5000, 4 KiB, 20 connections, 3 rounds
#   N=20000 ROUNDS=5 SIZE=64k cluster/bench/dkim-sign.sh
#   BASELINE=/path/to/old/batond cluster/bench/dkim-sign.sh   # adds the old binary, no keys
#
# Traffic stays on loopback: batond 127.0.0.1:12525 (raft 17301, admin 17401, http
# 19401), baton-load's counting sink (the smarthost) 127.0.0.3:12600.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-5000}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-4k}
CONNS=${CONNS:-20}
BATOND=${BATOND:-target/release/batond}
BATON_LOAD=${BATON_LOAD:-target/release/baton-load}
BASELINE=${BASELINE:-}
for b in "$BATOND" "$BATON_LOAD" ${BASELINE:+"$BASELINE"}; do
  [ -x "$b" ] || { echo "$b missing: cargo build --release -p batond -p baton-load" >&2; exit 2; }
done
command -v openssl >/dev/null || { echo "openssl missing" >&2; exit 2; }

WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$WORK/ed.pem"

keys() {
  case $1 in
    none) ;;
    rsa) printf '[[dkim]]\ndomain = "bench.test"\nselector = "r1"\nkey_file = "%s"\n' "$WORK/rsa.pem" ;;
    rsa+ed25519)
      keys rsa
      printf '[[dkim]]\ndomain = "bench.test"\nselector = "e1"\nkey_file = "%s"\nalgorithm = "ed25519-sha256"\n' "$WORK/ed.pem" ;;
    bounces) printf '[bounces]\ndomain = "bounces.bench.test"\n' ;;
  esac
}

# run VARIANT BINARY ROUND: one run; appends "variant ingest p99" to $WORK/results.
run() {
  local variant=$1 bin=$2 dir=$WORK/$1-r$3
  mkdir -p "$dir"
  cat >"$dir/batond.toml" <<EOF
[node]
id = 1
data_dir = "$dir/data"
[cluster]
listen = "127.0.0.1:17301"
advertise = "127.0.0.1:17301"
bootstrap = true
[smtp]
hostname = "relay.bench.test"
max_connections_per_ip = 0
[[smtp.listener]]
address = "127.0.0.1:12525"
relay_networks = ["127.0.0.0/8"]
[delivery]
smarthost = "127.0.0.3:12600"
tls = "disabled"
[admin]
listen = "127.0.0.1:17401"
[http]
listen = "127.0.0.1:19401"
$(keys "${variant#old-}")
EOF
  NO_COLOR=1 "$bin" --config "$dir/batond.toml" >"$dir/batond.log" 2>&1 &
  PID=$!
  local t0=$SECONDS
  until curl -sf -o /dev/null --max-time 2 http://127.0.0.1:19401/readyz; do
    kill -0 "$PID" 2>/dev/null || { tail -20 "$dir/batond.log" >&2; exit 1; }
    [ $((SECONDS - t0)) -lt 30 ] || { echo "batond not ready" >&2; exit 1; }
    sleep 0.2
  done
  # With [bounces], mail is refused (451) until the leader's bounce key is committed.
  if [ "$variant" = bounces ]; then
    until grep -q "bounce token key made" "$dir/batond.log"; do
      [ $((SECONDS - t0)) -lt 30 ] || { echo "no bounce key" >&2; exit 1; }
      sleep 0.2
    done
  fi
  "$BATON_LOAD" --target 127.0.0.1:12525 --sink 127.0.0.3:12600 --messages "$N" \
    --size "$SIZE" --connections "$CONNS" --json >"$dir/load.json" 2>"$dir/load.err" || true
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  python3 - "$dir/load.json" "$variant" "$3" >>"$WORK/results" <<'PY'
import json, sys
path, variant, rnd = sys.argv[1:]
try:
    j = json.load(open(path))
    p99 = j.get("latency_ms", {}).get("p99", j.get("p99_ms", float("nan")))
    print(variant, rnd, j["ingest_msgs_per_sec"], p99, j.get("accepted", 0))
except Exception as e:
    print(variant, rnd, "nan", "nan", 0)
PY
  tail -1 "$WORK/results"
}

read -r -a variants <<<"${VARIANTS:-none rsa rsa+ed25519 bounces}"
for r in $(seq 1 "$ROUNDS"); do
  [ -n "$BASELINE" ] && run old-none "$BASELINE" "$r"
  for v in "${variants[@]}"; do run "$v" "$BATOND" "$r"; done
done

echo
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, r, ingest, p99, acc = line.split()
    rows.setdefault(v, []).append((float(ingest), float(p99)))
base = None
print(f"{'variant':<14} {'runs':>4} {'ingest msg/s (median)':>22} {'p99 ms (median)':>16} {'vs none':>8}")
for v, xs in rows.items():
    ingest = statistics.median(x[0] for x in xs)
    p99 = statistics.median(x[1] for x in xs)
    if v == "none":
        base = ingest
    rel = f"{ingest / base:.2f}x" if base else "-"
    print(f"{v:<14} {len(xs):>4} {ingest:>22.0f} {p99:>16.1f} {rel:>8}")
PY
