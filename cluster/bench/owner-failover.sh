#!/usr/bin/env bash
# How long after a SIGKILL of the node delivering a domain another node delivers it
# (the dead node's lease must expire first: cluster.lease, default 10 s).
#
#   cluster/bench/owner-failover.sh               # 3 runs
#   RUNS=5 cluster/bench/owner-failover.sh
#
# Uses cluster/local.sh (fixed ports), target/release binaries and a baton-sink on
# 127.0.0.3:2600. Nothing leaves 127.0.0.0/8.
source "$(dirname "$0")/lib.sh"
runs=${RUNS:-3}
export SMARTHOST=127.0.0.3:2600
target/release/baton-sink --listen 127.0.0.3:2600 > /dev/null 2>&1 &
sink=$!
trap 'kill "$sink" 2>/dev/null; bench_cleanup' EXIT
for run in $(seq 1 "$runs"); do
  rm -rf "$BATON_LOCAL_DIR"
  cluster/local.sh up 3 >/dev/null
  target/release/baton-load --target 127.0.0.1:2500 --messages 200 --connections 4 >/dev/null 2>&1
  owner=""; leader=""
  for i in 1 2 3; do
    [ "$(metric "$i" baton_messages_delivered_total)" -gt 0 ] && owner=$i
    [ "$(metric "$i" baton_raft_leader)" = 1 ] && leader=$i
  done
  target/release/baton-load --target 127.0.0.1:2500 --messages 4000 --connections 4 \
    --timeout 120s > /dev/null 2>&1 &
  load=$!
  sleep 2
  declare -A before
  for i in 1 2 3; do before[$i]=$(metric "$i" baton_messages_delivered_total); done
  kill -9 "$(cat "$BATON_LOCAL_DIR/node$owner/pid")"
  t0=$(date +%s.%N)
  moved=""
  for _ in $(seq 1 1200); do
    for i in 1 2 3; do
      [ "$i" = "$owner" ] && continue
      [ "$(metric "$i" baton_messages_delivered_total)" -gt "${before[$i]}" ] && moved=$i
    done
    [ -n "$moved" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  echo "run $run: owner node $owner$([ "$owner" = "$leader" ] && echo " (leader)") SIGKILLed; node $moved delivered its domain $(echo "$t1 - $t0" | bc) s later"
  wait "$load" || true
  cluster/local.sh down >/dev/null
done
