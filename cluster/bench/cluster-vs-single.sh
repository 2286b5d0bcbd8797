#!/usr/bin/env bash
# Ingest through one node (direct) and through 3 nodes behind HAProxy, same load, same
# run: prints baton-load's ingest rate and latency for each, ROUNDS times, and the CPU
# time the node(s) spent per message (all nodes together; deliveries included).
#
#   cluster/bench/cluster-vs-single.sh            # 10,000 x 4 KiB over 20 connections
#   MESSAGES=20000 CONNECTIONS=60 ROUNDS=3 cluster/bench/cluster-vs-single.sh
#
# Uses target/release/{batond,baton-load} (built if missing), cluster/local.sh with its
# fixed ports, and a counting sink on 127.0.0.3:2600. Nothing leaves 127.0.0.0/8.
source "$(dirname "$0")/lib.sh"
messages=${MESSAGES:-10000}
connections=${CONNECTIONS:-20}
rounds=${ROUNDS:-2}
sed "s#./baton-data-local#$work/single#; s#127.0.0.2:2526#127.0.0.3:2600#" \
  cluster/examples/local-sink.toml > "$work/single.toml"
# cpu PID...: user + system CPU seconds of these processes so far.
cpu() {
  local p total=0
  for p in "$@"; do
    total=$(awk -v t="$total" '{printf "%.2f", t + ($14 + $15) / 100}' "/proc/$p/stat")
  done
  echo "$total"
}
# load ADDRESS PID...: the load through ADDRESS, and the CPU of PID... meanwhile.
load() {
  local target=$1 before after
  shift
  before=$(cpu "$@")
  target/release/baton-load --target "$target" --messages "$messages" \
    --connections "$connections" --sink 127.0.0.3:2600 2>/dev/null |
    grep -E "ingest rate|latency"
  after=$(cpu "$@")
  awk -v a="$after" -v b="$before" -v n="$messages" \
    'BEGIN{printf "node CPU per message: %.3f ms\n", (a - b) * 1000 / n}'
}
for round in $(seq 1 "$rounds"); do
  rm -rf "$work/single"
  target/release/batond --config "$work/single.toml" > "$work/single.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9401/readyz >/dev/null && break; sleep 0.1; done
  echo "== round $round: one node, direct"
  load 127.0.0.1:2525 "$pid"
  kill -TERM "$pid"; wait "$pid" || true
  rm -rf "$BATON_LOCAL_DIR"
  cluster/local.sh up 3 >/dev/null
  echo "== round $round: three nodes through HAProxy"
  load 127.0.0.1:2500 $(cat "$BATON_LOCAL_DIR"/node*/pid)
  cluster/local.sh down >/dev/null
done
