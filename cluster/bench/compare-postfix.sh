#!/usr/bin/env bash
# compare-postfix.sh — run the same baton-load workload against Baton (single
# node) and Postfix on this machine, alternating rounds, and print medians.
#
# Usage: cluster/bench/compare-postfix.sh [options]
#   -n, --messages N      messages per run            (env N,       default 10000)
#   -s, --size S          message size, 4k/1M allowed (env S,       default 4096)
#   -c, --connections C   concurrent SMTP connections (env C,       default 20)
#   -r, --rounds R        rounds (1 Baton + 1 Postfix run each)
#                                                     (env ROUNDS,  default 3)
#   -o, --only WHICH      baton | postfix | both      (env ONLY,    default both)
#   -k, --keep            keep the work dir           (env KEEP=1)
#   -h, --help
# Other env: LOAD_TIMEOUT (seconds, baton-load --timeout: bound on ingest +
#   delivery per run, default 30 + N/25; a run that hits it reports TIMED OUT),
#   OUT (directory to copy per-run JSON and logs into), BATOND, BATON_LOAD
#   (binaries; default target/release/...), BATON_LOG (batond log filter).
#
# Needs root (Postfix is started with its own config dir under the work dir),
# python3, curl. Installs the Debian postfix package if /usr/sbin/postfix is
# missing (the system instance is never configured or started). All traffic
# stays on 127.0.0.0/8:
#   Baton  SMTP 127.0.0.1:12525   (raft 17301, admin 17401, http 19401)
#   Postfix SMTP 127.0.0.1:12526
#   baton-load's counting sink (the relays' smarthost) 127.0.0.3:12600
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

N=${N:-10000}
S=${S:-4096}
C=${C:-20}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-both}
KEEP=${KEEP:-0}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-}
OUT=${OUT:-}
BATOND=${BATOND:-$ROOT/target/release/batond}
BATON_LOAD=${BATON_LOAD:-$ROOT/target/release/baton-load}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--messages) N=$2; shift 2 ;;
    -s|--size) S=$2; shift 2 ;;
    -c|--connections) C=$2; shift 2 ;;
    -r|--rounds) ROUNDS=$2; shift 2 ;;
    -o|--only) ONLY=$2; shift 2 ;;
    -k|--keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$ONLY" in baton|postfix|both) ;; *) echo "ONLY must be baton, postfix or both" >&2; exit 2 ;; esac
[[ $N =~ ^[1-9][0-9]*$ ]] && : "${LOAD_TIMEOUT:=$((30 + N / 25))}"
for v in N C ROUNDS LOAD_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer (got '${!v}')" >&2; exit 2; }
done

BATON_SMTP=127.0.0.1:12525
BATON_RAFT=127.0.0.1:17301
BATON_ADMIN=127.0.0.1:17401
BATON_HTTP=127.0.0.1:19401
POSTFIX_SMTP=127.0.0.1:12526
SINK=127.0.0.3:12600

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

run_baton=0; run_postfix=0
[ "$ONLY" != postfix ] && run_baton=1
[ "$ONLY" != baton ] && run_postfix=1

command -v python3 >/dev/null || die "python3 is required"
[ -x "$BATON_LOAD" ] || die "$BATON_LOAD missing: cargo build --release -p baton-load -p batond"
if [ $run_baton = 1 ]; then
  command -v curl >/dev/null || die "curl is required"
  [ -x "$BATOND" ] || die "$BATOND missing: cargo build --release -p baton-load -p batond"
fi

# ---------------------------------------------------------------- state + cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baton-vs-postfix.XXXXXX")
chmod 755 "$WORK"            # the postfix user must reach the spool below it
RESULTS=$WORK/results        # one <round>-<system>.json per run
mkdir -p "$RESULTS"
BATOND_PID=""
LOAD_PID=""                  # `timeout` wrapping a running baton-load
PF_ETC=""                    # config dir of a Postfix instance that may be running

postfix_running() { [ -n "$PF_ETC" ] && ! /usr/lib/postfix/sbin/master -c "$PF_ETC" -t 2>/dev/null; }

stop_batond() {
  [ -n "$BATOND_PID" ] || return 0
  local pid=$BATOND_PID t0=$SECONDS
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge 40 ]; then
      log "batond ($pid) still running 40 s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  BATOND_PID=""
  BATOND_STOP_SECS=$((SECONDS - t0))
  BATOND_RC=$rc
}

stop_postfix() {
  [ -n "$PF_ETC" ] || return 0
  local etc=$PF_ETC spool pid t0=$SECONDS
  spool=$(postconf -c "$etc" -h queue_directory)
  if postfix_running; then
    pid=$(sed -n '1{s/ //g;p}' "$spool/pid/master.pid" 2>/dev/null || true)
    postfix -c "$etc" stop >/dev/null 2>&1 || true
    # `postfix stop` waits up to 5 s and then SIGKILLs the process group; make
    # sure the master really is gone before its directories are removed.
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $((SECONDS - t0)) -lt 20 ]; do
      sleep 0.1
    done
  fi
  PF_ETC=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$LOAD_PID" ]; then
    kill -TERM "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  stop_batond || true
  stop_postfix || true
  if [ -n "$OUT" ] && [ -d "$WORK" ]; then
    mkdir -p "$OUT"
    cp -r "$RESULTS"/. "$OUT"/ 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ]; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fail early if one of our fixed addresses is already taken.
port_in_use() {
  local host=${1%:*} port=${1##*:}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}
check_free() {
  local a
  for a in "$@"; do
    port_in_use "$a" && die "$a is already in use (another relay or benchmark running?)"
  done
  return 0
}

# Wait until an SMTP server at $1 greets with 220 (bounded by $2 seconds).
wait_smtp_banner() {
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.settimeout(5)
            banner = s.recv(512)
            if banner.startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                try:
                    s.recv(512)
                except OSError:
                    pass
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}

# Run baton-load against $1; JSON to $2, stderr to $3. Never fails the script:
# a failed run (exit status != 0) is reported and still goes into the table.
run_load() {
  local target=$1 json=$2 err=$3 rc=0
  # In the background + wait, so that a signal to this script is handled at
  # once (the EXIT trap then stops the load too).
  timeout --kill-after=10 $((LOAD_TIMEOUT + 60)) \
    "$BATON_LOAD" --target "$target" --sink "$SINK" --messages "$N" --size "$S" \
    --connections "$C" --timeout "${LOAD_TIMEOUT}s" --json >"$json" 2>"$err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=""
  echo "$rc" >"$json.rc"
  if [ "$rc" != 0 ]; then
    log "baton-load exited $rc against $target"
    [ -s "$err" ] && sed 's/^/    load: /' "$err" | head -20 >&2
  fi
  return 0
}

# One-line summary of a run's JSON.
describe_run() {
  python3 - "$1" <<'PY'
import json, sys
path = sys.argv[1]
try:
    rc = open(path + ".rc").read().strip()
except OSError:
    rc = "?"
try:
    j = json.load(open(path))
except Exception as e:
    print(f"no JSON result ({e.__class__.__name__}), baton-load exit {rc}")
    sys.exit(0)
s = j.get("sink") or {}
lat = j["latency_ms"]
if s.get("missing", 1) == 0 and not s.get("timed_out"):
    e2e = f"e2e {s['e2e_msgs_per_sec']:.1f} msg/s ({s['e2e_secs']:.2f} s)"
else:
    e2e = "e2e INCOMPLETE (not all accepted messages reached the sink in time)"
print(f"accepted {j['accepted']}/{j['messages']} failed {j['failed']} "
      f"connect_err {j['connect_errors']} | ingest {j['ingest_msgs_per_sec']:.1f} msg/s "
      f"({j['ingest_secs']:.2f} s) | p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} "
      f"max {lat['max']:.2f} ms | {e2e} delivered {s.get('delivered')} "
      f"missing {s.get('missing')} dup {s.get('duplicates')}"
      f"{' TIMED OUT' if s.get('timed_out') else ''} | exit {rc}")
for f in j.get("first_failures") or []:
    print(f"    failure: {f}")
PY
}

# ------------------------------------------------------------------------ Baton
baton_round() {
  local round=$1 dir=$WORK/baton-r$1
  mkdir -p "$dir"
  cat >"$dir/batond.toml" <<EOF
[node]
id = 1
data_dir = "$dir/baton-data"

[cluster]
listen = "$BATON_RAFT"
advertise = "$BATON_RAFT"
bootstrap = true

[smtp]
hostname = "relay.bench.test"
max_connections_per_ip = 0

[[smtp.listener]]
address = "$BATON_SMTP"
relay_networks = ["127.0.0.0/8"]

[delivery]
smarthost = "$SINK"
tls = "disabled"

[admin]
listen = "$BATON_ADMIN"

[http]
listen = "$BATON_HTTP"
EOF
  "$BATOND" check-config "$dir/batond.toml" >/dev/null || die "generated batond config is invalid"
  check_free "$BATON_SMTP" "$BATON_RAFT" "$BATON_ADMIN" "$BATON_HTTP" "$SINK"

  NO_COLOR=1 "$BATOND" --config "$dir/batond.toml" >"$dir/batond.log" 2>&1 &
  BATOND_PID=$!
  local t0=$SECONDS
  until curl -sf -o /dev/null --max-time 2 "http://$BATON_HTTP/readyz"; do
    if ! kill -0 "$BATOND_PID" 2>/dev/null; then
      wait "$BATOND_PID" 2>/dev/null || true
      BATOND_PID=""
      sed 's/^/    batond: /' "$dir/batond.log" | tail -30 >&2
      die "batond exited before becoming ready"
    fi
    if [ $((SECONDS - t0)) -ge 30 ]; then
      sed 's/^/    batond: /' "$dir/batond.log" | tail -30 >&2
      die "batond not ready after 30 s"
    fi
    sleep 0.2
  done
  log "round $round baton: ready after $((SECONDS - t0)) s, running load"

  local json=$RESULTS/r$round-baton.json
  run_load "$BATON_SMTP" "$json" "$dir/load.stderr"
  stop_batond
  cp "$dir/batond.log" "$RESULTS/r$round-baton.batond.log"
  log "round $round baton: batond stopped in ${BATOND_STOP_SECS} s, exit status $BATOND_RC"
  [ "$BATOND_RC" = 0 ] || { log "batond exit status $BATOND_RC; log tail:"; tail -20 "$dir/batond.log" | sed 's/^/    batond: /' >&2; }
  # Failed delivery attempts (retried later: they hurt end-to-end), and anything
  # at WARN/ERROR level or a panic, are worth a look.
  local plain=$dir/batond.plain.log bad
  sed 's/\x1b\[[0-9;]*m//g' "$dir/batond.log" >"$plain"
  bad=$(grep -c 'attempt failed' "$plain" || true)
  if [ "$bad" -gt 0 ]; then
    log "round $round baton: $bad failed delivery attempts in batond's log, e.g.:"
    grep 'attempt failed' "$plain" | sed 's/ id=[0-9A-Z]*//' | cut -c28- | sort | uniq -c |
      sort -rn | head -5 | cut -c1-300 | sed 's/^/    batond: /' >&2
  fi
  bad=$(grep -Ec ' (WARN|ERROR) |panicked' "$plain" || true)
  if [ "$bad" -gt 0 ]; then
    log "round $round baton: $bad WARN/ERROR/panic lines in batond's log, first ones:"
    grep -E ' (WARN|ERROR) |panicked' "$plain" | head -10 | cut -c1-300 | sed 's/^/    batond: /' >&2
  fi
  [ "$KEEP" = 1 ] || rm -rf "$dir/baton-data"
  printf 'r%-2s baton   %s\n' "$round" "$(describe_run "$json")"
}

# ---------------------------------------------------------------------- Postfix
ensure_postfix() {
  if [ ! -x /usr/sbin/postfix ]; then
    log "installing postfix (Debian package; the system instance stays unconfigured)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >"$WORK/apt.log" 2>&1; then
      apt-get update >>"$WORK/apt.log" 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >>"$WORK/apt.log" 2>&1 ||
        { tail -20 "$WORK/apt.log" >&2; die "cannot install postfix"; }
    fi
  fi
  id postfix >/dev/null 2>&1 || die "no postfix user (the package creates it)"
  getent group postdrop >/dev/null || die "no postdrop group (the package creates it)"
  [ -x /usr/lib/postfix/sbin/master ] || die "no /usr/lib/postfix/sbin/master"
}

write_postfix_config() {
  local dir=$1 etc=$1/postfix-etc
  mkdir -p "$etc"
  cat >"$etc/main.cf" <<EOF
# Generated by cluster/bench/compare-postfix.sh. Postfix defaults otherwise
# (notably: queue files are fsynced, as always in Postfix).
compatibility_level = 3.6
config_directory = $etc
queue_directory = $dir/postfix-spool
data_directory = $dir/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Nothing is delivered locally; every domain (the load's sink.test included)
# is remote and goes to the relayhost via the smtp transport.
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [${SINK%:*}]:${SINK##*:}
smtpd_relay_restrictions = permit_mynetworks, reject
default_process_limit = 100
smtp_tls_security_level = none
smtp_dns_support_level = disabled
maillog_file = $dir/postfix.log
maillog_file_prefixes = $dir
EOF
  cat >"$etc/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
$POSTFIX_SMTP inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  # The queue directory must exist (root-owned); `postfix start` creates the
  # queue subdirectories and data_directory with the right owners (post-install).
  mkdir -m 755 "$dir/postfix-spool"
}

# Number of messages in the Postfix queue (all queues).
postfix_queue_count() {
  local out
  if out=$(postqueue -c "$1" -j 2>&1); then
    printf '%s' "$out" | grep -c . || true
  else
    echo "unknown (postqueue: $out)"
  fi
}

postfix_round() {
  local round=$1 dir=$WORK/postfix-r$1
  mkdir -p "$dir"
  chmod 755 "$dir"
  write_postfix_config "$dir"
  local etc=$dir/postfix-etc
  check_free "$POSTFIX_SMTP" "$SINK"

  if ! postfix -c "$etc" check >"$dir/check.out" 2>&1; then
    cat "$dir/check.out" "$dir/postfix.log" 2>/dev/null | sed 's/^/    postfix: /' >&2
    die "postfix check failed"
  fi
  PF_ETC=$etc
  if ! postfix -c "$etc" start >"$dir/start.out" 2>&1; then
    cat "$dir/start.out" "$dir/postfix.log" 2>/dev/null | tail -30 | sed 's/^/    postfix: /' >&2
    die "postfix start failed"
  fi
  if ! wait_smtp_banner "$POSTFIX_SMTP" 30; then
    tail -30 "$dir/postfix.log" 2>/dev/null | sed 's/^/    postfix: /' >&2
    die "postfix smtpd on $POSTFIX_SMTP not answering after 30 s"
  fi
  local q
  q=$(postfix_queue_count "$etc")
  [ "$q" = 0 ] || die "postfix queue not empty before round $round ($q messages)"
  log "round $round postfix: ready (queue empty), running load"

  local json=$RESULTS/r$round-postfix.json
  run_load "$POSTFIX_SMTP" "$json" "$dir/load.stderr"
  q=$(postfix_queue_count "$etc")
  stop_postfix
  cp "$dir/postfix.log" "$RESULTS/r$round-postfix.maillog" 2>/dev/null || true
  [ "$q" = 0 ] || log "round $round postfix: $q messages still queued after the load"
  local bad
  bad=$(grep -c 'status=deferred' "$dir/postfix.log" 2>/dev/null || true)
  if [ "${bad:-0}" -gt 0 ]; then
    log "round $round postfix: $bad deferred delivery attempts in the mail log, e.g.:"
    grep 'status=deferred' "$dir/postfix.log" | head -3 | cut -c1-300 | sed 's/^/    postfix: /' >&2
  fi
  bad=$(grep -Ec 'warning:|fatal:|panic:|error:' "$dir/postfix.log" 2>/dev/null || true)
  if [ "${bad:-0}" -gt 0 ]; then
    log "round $round postfix: $bad warning/error lines in the mail log, first ones:"
    grep -E 'warning:|fatal:|panic:|error:' "$dir/postfix.log" | head -10 | cut -c1-300 | sed 's/^/    postfix: /' >&2
  fi
  [ "$KEEP" = 1 ] || rm -rf "$dir/postfix-spool"
  printf 'r%-2s postfix %s\n' "$round" "$(describe_run "$json")"
}

# ------------------------------------------------------------------------- main
if [ $run_postfix = 1 ]; then
  [ "$(id -u)" = 0 ] || die "the Postfix part needs root (use ONLY=baton otherwise)"
  ensure_postfix
fi

log "work dir $WORK"
echo "baton vs postfix: N=$N size=$S connections=$C rounds=$ROUNDS ($(nproc) cores, $(uname -r))"
if [ $run_baton = 1 ]; then
  echo "  baton   tree $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- 2>/dev/null || echo '+dirty'), batond built $(date -r "$BATOND" '+%F %T') -> $BATON_SMTP"
fi
[ $run_postfix = 0 ] || echo "  postfix $(postconf -d -h mail_version 2>/dev/null) -> $POSTFIX_SMTP"
echo "  sink (baton-load) $SINK"
echo

for ((r = 1; r <= ROUNDS; r++)); do
  if [ $run_baton = 1 ]; then baton_round "$r"; fi
  if [ $run_postfix = 1 ]; then postfix_round "$r"; fi
done

echo
python3 - "$RESULTS" <<'PY'
import glob, json, os, statistics, sys

results = sys.argv[1]
runs = {"baton": [], "postfix": []}
bad = {"baton": 0, "postfix": 0}
for path in sorted(glob.glob(os.path.join(results, "r*-*.json"))):
    system = os.path.basename(path).rsplit("-", 1)[1][:-len(".json")]
    try:
        j = json.load(open(path))
    except Exception:
        bad[system] += 1
        continue
    rc = open(path + ".rc").read().strip() if os.path.exists(path + ".rc") else "?"
    if rc != "0":
        bad[system] += 1
    runs[system].append(j)

def med(system, f):
    vals = [f(j) for j in runs[system]]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

metrics = [
    ("ingest msgs/s", lambda j: j["ingest_msgs_per_sec"], True),
    ("p50 end-of-DATA->250 ms", lambda j: j["latency_ms"]["p50"], False),
    ("p99 end-of-DATA->250 ms", lambda j: j["latency_ms"]["p99"], False),
    ("end-to-end delivered msgs/s", lambda j: e2e(j), True),
]

def e2e(j):
    # Only runs where every accepted message reached the sink have a meaningful
    # end-to-end rate; baton-load's rate for incomplete runs ignores the missing ones.
    s = j.get("sink") or {}
    if s.get("missing", 1) != 0 or s.get("timed_out"):
        return None
    return s.get("e2e_msgs_per_sec")

def fmt(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")

print(f"{'median over runs':<30} {'baton':>10} {'postfix':>10} {'baton/postfix':>14}")
print("-" * 67)
for name, f, ratio in metrics:
    b, p = med("baton", f), med("postfix", f)
    r = f"{b / p:.2f}x" if ratio and b is not None and p else ""
    print(f"{name:<30} {fmt(b):>10} {fmt(p):>10} {r:>14}")
print(f"{'runs (of which not clean)':<30} {len(runs['baton']):>5} ({bad['baton']}) "
      f"{len(runs['postfix']):>6} ({bad['postfix']})")
for system in ("baton", "postfix"):
    inc = sum(1 for j in runs[system] if e2e(j) is None)
    if inc:
        print(f"NOTE: {inc} {system} run(s) incomplete end to end: left out of the e2e median")
if bad["baton"] or bad["postfix"]:
    print("WARNING: some runs did not send/accept/deliver everything (see the per-run lines)")
PY
