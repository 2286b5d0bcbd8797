#!/usr/bin/env bash
# A local Baton cluster on 127.0.0.1: N nodes with their own ports and data dirs, and
# HAProxy on 127.0.0.1:2500 in front of their SMTP listeners (send-proxy-v2).
#
#   cluster/local.sh up N       start N nodes (node 1 bootstraps, the rest join) + HAProxy
#   cluster/local.sh add I      start one more node I (joins through node 1's Raft port; not
#                               added to HAProxy) — e.g. to watch a node catch up
#   cluster/local.sh restart I  stop node I if it runs (SIGTERM, SIGKILL after 40 s) and
#                               start it again on its config and data; any node, node 1
#                               included (with its data it rejoins, it never bootstraps)
#   cluster/local.sh status     readiness, role and commit index of each node
#   cluster/local.sh down       stop everything (SIGTERM, then SIGKILL after 40 s)
#
# Node i listens on 127.0.0.1: SMTP 2600+i (PROXY protocol required), Raft 7300+i, admin
# 7400+i, HTTP 9400+i. Data and logs go under $BATON_LOCAL_DIR (default /tmp/baton-local):
# node<i>/baton.toml, node<i>/data, node<i>/batond.log (appended across restarts, each
# start marked by a "local.sh: starting node i" line). Deliveries go to $SMARTHOST
# (default 127.0.0.3:2600, e.g. a baton-sink or baton-load's sink); set DNS_SERVER=ip:port
# to use MX lookups instead. Binaries: $BATOND (default target/release/batond; built if
# missing). A node must be ready within $READY_TIMEOUT seconds (default 60).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${BATON_LOCAL_DIR:-/tmp/baton-local}
batond=${BATOND:-$top/target/release/batond}
smarthost=${SMARTHOST:-127.0.0.3:2600}
lb=${LB_ADDR:-127.0.0.1:2500}

die() { echo "local.sh: $*" >&2; exit 1; }

node_config() {
  local i=$1 n=$2
  local join="" bootstrap=false
  if [ "$i" = 1 ]; then bootstrap=true; else join='"127.0.0.1:7301"'; fi
  local delivery="smarthost = \"$smarthost\""
  [ -n "${DNS_SERVER:-}" ] && delivery="dns_servers = [\"$DNS_SERVER\"]"
  cat <<TOML
[node]
id = $i
data_dir = "$dir/node$i/data"

[cluster]
listen = "127.0.0.1:$((7300 + i))"
advertise = "127.0.0.1:$((7300 + i))"
bootstrap = $bootstrap
join = [$join]

[smtp]
hostname = "node$i.baton.local"
max_connections_per_ip = 0

[[smtp.listener]]
address = "127.0.0.1:$((2600 + i))"
proxy_protocol = true
proxy_trusted = ["127.0.0.0/8"]
relay_networks = ["127.0.0.0/8"]

[delivery]
$delivery
tls = "${DELIVERY_TLS:-opportunistic}"

[admin]
listen = "127.0.0.1:$((7400 + i))"

[http]
listen = "127.0.0.1:$((9400 + i))"
TOML
}

wait_ready() {
  local i=$1
  local secs=${READY_TIMEOUT:-60}
  for _ in $(seq 1 $((secs * 5))); do
    curl -sf "http://127.0.0.1:$((9400 + i))/readyz" >/dev/null 2>&1 && return 0
    if ! kill -0 "$(cat "$dir/node$i/pid")" 2>/dev/null; then
      tail -20 "$dir/node$i/batond.log" >&2
      die "node $i exited during start"
    fi
    sleep 0.2
  done
  die "node $i not ready after $secs s (see $dir/node$i/batond.log; READY_TIMEOUT sets the wait)"
}

haproxy_config() {
  local n=$1
  cat <<CFG
global
    maxconn 4000
    pidfile $dir/haproxy.pid

defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m

frontend smtp
    bind $lb
    default_backend baton

backend baton
    balance roundrobin
    option httpchk GET /readyz
CFG
  for i in $(seq 1 "$n"); do
    echo "    server node$i 127.0.0.1:$((2600 + i)) send-proxy-v2 check port $((9400 + i)) inter 500 fall 2 rise 2"
  done
}

# Starts node i on its config (node<i>/baton.toml) and waits until it is ready. Its
# output is appended to its logs, never truncated: a restarted node's crash stays there.
run_node() {
  local i=$1
  "$batond" check-config "$dir/node$i/baton.toml" >/dev/null
  local mark
  mark="local.sh: starting node $i at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "$mark" >> "$dir/node$i/batond.log"
  echo "$mark" >> "$dir/node$i/stdout.log"
  NO_COLOR=1 BATON_LOG=${BATON_LOG:-info} "$batond" --config "$dir/node$i/baton.toml" \
    >> "$dir/node$i/stdout.log" 2>> "$dir/node$i/batond.log" &
  echo $! > "$dir/node$i/pid"
  wait_ready "$i"
  echo "node $i ready: smtp 127.0.0.1:$((2600 + i)) raft 127.0.0.1:$((7300 + i))" \
    "admin http://127.0.0.1:$((7400 + i)) http http://127.0.0.1:$((9400 + i))"
}

start_node() {
  local i=$1 n=$2
  mkdir -p "$dir/node$i"
  node_config "$i" "$n" > "$dir/node$i/baton.toml"
  run_node "$i"
}

# The pid of node i if it runs: its pid file names a live batond started on node i's
# config (a stale pid file never makes us signal another process).
node_pid() {
  local i=$1 pid cmd
  [ -e "$dir/node$i/pid" ] || return 1
  pid=$(cat "$dir/node$i/pid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  [[ "$cmd" == *"/node$i/baton.toml"* ]] || return 1
  echo "$pid"
}

# Whether a process runs (exists and is not a zombie its parent has yet to reap).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# SIGTERM to the given pids (they drain), SIGKILL to those still alive after 40 s.
stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 200); do
    local any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    [ $any = 0 ] && return 0
    sleep 0.2
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    [ $any = 0 ] && return 0
    sleep 0.1
  done
}

add() {
  local i=${1:-}
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 2 ] || die "usage: local.sh add I (I >= 2)"
  node_pid "$i" >/dev/null && die "node $i is running (local.sh restart $i restarts it)"
  start_node "$i" "$i"
}

# Node 1's config bootstraps: with its data, a restart just rejoins the cluster it
# formed; without data it would form a second cluster, so that is refused.
restart() {
  local i=${1:-} pid
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] || die "usage: local.sh restart I (I >= 1)"
  [ -e "$dir/node$i/baton.toml" ] || die "node $i was never started in $dir (local.sh up N or add I)"
  if grep -q '^bootstrap = true' "$dir/node$i/baton.toml" \
    && [ -z "$(ls -A "$dir/node$i/data" 2>/dev/null)" ]; then
    die "node $i bootstraps and has no data in $dir/node$i/data: starting it would form a second cluster"
  fi
  if pid=$(node_pid "$i"); then
    echo "stopping node $i (pid $pid)"
    stop_pids "$pid"
    alive "$pid" && die "node $i (pid $pid) did not stop"
  fi
  run_node "$i"
}

up() {
  local n=${1:-3}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "usage: local.sh up N (N >= 1)"
  command -v haproxy >/dev/null || die "haproxy not found (apt-get install haproxy)"
  if [ ! -x "$batond" ]; then
    (cd "$top" && cargo build --release -p batond)
  fi
  [ -e "$dir/haproxy.pid" ] && die "$dir is in use: run local.sh down first"
  mkdir -p "$dir"
  for i in $(seq 1 "$n"); do
    start_node "$i" "$n"
  done
  haproxy_config "$n" > "$dir/haproxy.cfg"
  haproxy -f "$dir/haproxy.cfg" -D || die "haproxy did not start (config: $dir/haproxy.cfg)"
  for _ in $(seq 1 50); do
    [ -s "$dir/haproxy.pid" ] && kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null && break
    sleep 0.1
  done
  kill -0 "$(cat "$dir/haproxy.pid" 2>/dev/null)" 2>/dev/null || die "haproxy is not running"
  echo "haproxy on $lb -> $n nodes (send-proxy-v2, health from /readyz)"
}

status() {
  for p in "$dir"/node*/pid; do
    [ -e "$p" ] || continue
    local d i pid ready leader commit
    d=$(dirname "$p"); i=${d##*node}; pid=$(cat "$p")
    if kill -0 "$pid" 2>/dev/null; then
      ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((9400 + i))/readyz" || true)
      metrics=$(curl -s "http://127.0.0.1:$((9400 + i))/metrics" || true)
      leader=$(echo "$metrics" | awk '$1=="baton_raft_leader"{print $2}')
      commit=$(echo "$metrics" | awk '$1=="baton_raft_commit_index"{print $2}')
      echo "node $i pid $pid readyz $ready leader ${leader:-?} commit ${commit:-?}"
    else
      echo "node $i pid $pid not running"
    fi
  done
  if [ -e "$dir/haproxy.pid" ] && kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; then
    echo "haproxy on $lb running"
  fi
}

down() {
  if [ -e "$dir/haproxy.pid" ]; then
    kill "$(cat "$dir/haproxy.pid")" 2>/dev/null || true
    rm -f "$dir/haproxy.pid"
  fi
  local pids=() p d pid
  for p in "$dir"/node*/pid; do
    [ -e "$p" ] || continue
    d=$(dirname "$p")
    if pid=$(node_pid "${d##*node}"); then pids+=("$pid"); fi
    rm -f "$p"
  done
  [ ${#pids[@]} = 0 ] || stop_pids "${pids[@]}"
  echo "stopped; data and logs kept in $dir (rm -rf it for a fresh cluster)"
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  add) add "${2:-}" ;;
  restart) restart "${2:-}" ;;
  status) status ;;
  down) down ;;
  *) die "usage: local.sh up N | add I | restart I | status | down" ;;
esac
