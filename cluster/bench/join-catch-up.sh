#!/usr/bin/env bash
# A node joining a cluster that holds many queued messages: how long until it is caught
# up (ready: a voter that applied the leader's commit index) and its peak RSS meanwhile.
#
#   cluster/bench/join-catch-up.sh                # 100,000 x 4 KiB queued on 3 nodes
#   MESSAGES=20000 cluster/bench/join-catch-up.sh
#
# Deliveries go to 127.0.0.9:9, where nothing listens: every message stays queued
# (deferred). Uses cluster/local.sh (fixed ports) and target/release binaries.
source "$(dirname "$0")/lib.sh"
messages=${MESSAGES:-100000}
export SMARTHOST=127.0.0.9:9
cluster/local.sh up 3 >/dev/null
target/release/baton-load --target 127.0.0.1:2500 --messages "$messages" --size 4096 \
  --connections 40 --timeout 1800s 2>/dev/null | grep -E "ingest rate|failed" || true
queued=$(curl -s http://127.0.0.1:9401/metrics | awk '$1=="baton_queue_messages"{print $2}')
echo "queued: $queued messages; node 1 data: $(du -sh "$BATON_LOCAL_DIR/node1/data" | cut -f1)"
start=$(date +%s.%N)
READY_TIMEOUT=1800 cluster/local.sh add 4 >/dev/null &
adder=$!
until [ -s "$BATON_LOCAL_DIR/node4/pid" ]; do sleep 0.05; done
pid=$(cat "$BATON_LOCAL_DIR/node4/pid")
peak=0
while kill -0 "$adder" 2>/dev/null; do
  hwm=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$hwm" ] && peak=$hwm
  sleep 0.2
done
wait "$adder"
end=$(date +%s.%N)
m=$(curl -s http://127.0.0.1:9404/metrics)
echo "node 4 ready after $(echo "$end - $start" | bc) s: queue $(echo "$m" | awk '$1=="baton_queue_messages"{print $2}') messages, peak RSS $((peak / 1024)) MiB"
grep -c "installed a snapshot from the leader" "$BATON_LOCAL_DIR/node4/batond.log" | sed 's/^/snapshots installed: /'
