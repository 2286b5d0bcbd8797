# Shared set-up for the cluster benchmarks (sourced, not run): moves to the repository,
# builds the release binaries if missing, and gives each run a scratch directory ($work)
# and its own cluster/local.sh directory, both cleaned up on exit.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
[ -x target/release/batond ] && [ -x target/release/baton-load ] && [ -x target/release/baton-sink ] ||
  cargo build --release -p batond -p baton-load
work=$(mktemp -d)
export BATON_LOCAL_DIR=$work/local
bench_cleanup() {
  cluster/local.sh down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap bench_cleanup EXIT
# metric NODE NAME: a metric of local node NODE as an integer.
metric() { curl -s "http://127.0.0.1:$((9400 + $1))/metrics" | awk -v n="$2" '$1==n{print int($2)}'; }
