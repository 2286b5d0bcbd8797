#!/usr/bin/env bash
# Ingest through one node (direct) and through 3 nodes behind HAProxy, same load, same
# run: prints baton-load's ingest rate and latency for each, ROUNDS times.
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
load() {
  target/release/baton-load --target "$1" --messages "$messages" --connections "$connections" \
    --sink 127.0.0.3:2600 2>/dev/null | grep -E "ingest rate|latency"
}
for round in $(seq 1 "$rounds"); do
  rm -rf "$work/single"
  target/release/batond --config "$work/single.toml" > "$work/single.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:9401/readyz >/dev/null && break; sleep 0.1; done
  echo "== round $round: one node, direct"
  load 127.0.0.1:2525
  kill -TERM "$pid"; wait "$pid" || true
  rm -rf "$BATON_LOCAL_DIR"
  cluster/local.sh up 3 >/dev/null
  echo "== round $round: three nodes through HAProxy"
  load 127.0.0.1:2500
  cluster/local.sh down >/dev/null
done
