#!/usr/bin/env bash
# Prepare a Debian machine for development: RabbitMQ (with its Prometheus plugin), PostgreSQL,
# Patroni (the local cluster's), HAProxy (the refusal tier's),
# Prometheus's binaries (prometheus, promtool: the monitoring tests run promtool), the .venv,
# checkov in .venv-tools (the Kubernetes tests run it), and what the registrant's page's tests
# need: Debian's chromium (driven by Playwright for Python, a dev dependency, through its
# executable: no browser is downloaded), node (runs the page's validator against the API's) and
# a pinned axe-core in .venv/share/axe-core (scripts/install_axe.py).
# Idempotent: every step checks first and only acts when something is missing;
# a run with nothing to do prints nothing.
#
#   scripts/setup.sh
#
# Prometheus's packaged service is never left running (monitoring/prometheus.yml is run by hand, see
# the README's Operations section).
#
# INTAKE_SETUP_SKIP_SERVICES=1 skips everything except the virtualenv.
set -euo pipefail

usage() {
    echo "usage: $0" >&2
    echo "  env INTAKE_SETUP_SKIP_SERVICES=1: only create/update .venv" >&2
}

for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Tools with pinned dependencies of their own (checkov), apart from the project's.
TOOLS="$ROOT/.venv-tools"
CHECKOV_VERSION=3.3.30
skip_services="${INTAKE_SETUP_SKIP_SERVICES:-0}"

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export HOME="${HOME:-/root}" # rabbitmqctl refuses to run without it
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

TAG=setup
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root (or run with INTAKE_SETUP_SKIP_SERVICES=1)"
}

# psql as the postgres superuser over the local socket (peer auth on a fresh install).
# cd / so psql does not warn about an unreadable working directory.
pg_su() { (cd / && runuser -u postgres -- psql -v ON_ERROR_STOP=1 -tAc "$1"); }

venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c pass >/dev/null 2>&1; }
tools_ok() { [ -x "$TOOLS/bin/python" ] && "$TOOLS/bin/python" -c pass >/dev/null 2>&1; }

# Debian's prometheus and haproxy packages enable and start their service from their postinst:
# under systemd always; without systemd through invoke-rc.d, which starts it only when a
# runlevel is known and no policy-rc.d forbids it (in a container it usually does not). Those
# daemons would scrape the package's default targets and hold port 9090, or run a balancer
# nothing here uses (the benchmarks start HAProxy with a configuration of their own), so stop
# them and keep them off at boot.
stop_packaged_service() {
    if [ -d /run/systemd/system ]; then
        quiet systemctl disable --now "$1.service"
    elif [ -x "/etc/init.d/$1" ]; then
        # start-stop-daemon --oknodo: succeeds when nothing runs.
        quiet "/etc/init.d/$1" stop
        quiet update-rc.d "$1" disable
    fi
}

# --- apt packages ------------------------------------------------------------
pkgs=()
prometheus_missing=0
haproxy_missing=0
if [ "$skip_services" != 1 ]; then
    command -v rabbitmqctl >/dev/null 2>&1 || pkgs+=(rabbitmq-server)
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || pkgs+=(postgresql)
    # The local cluster (intake cluster, tests/cluster): Patroni with its raft store.
    { [ -x /usr/bin/patroni ] && /usr/bin/python3 -c 'import pysyncobj' 2>/dev/null; } ||
        pkgs+=(patroni python3-pysyncobj)
    # Its network partitions (cluster/network.py, the chaos suite's rabbit-partition).
    command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)
    # Installed on its own, below (not with its recommends).
    { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || prometheus_missing=1
    # The refusal tier in front of the edges (benchmarks/refusal_tier.py, its tests).
    command -v haproxy >/dev/null 2>&1 || { pkgs+=(haproxy) && haproxy_missing=1; }
    # The registrant's page's tests (tests/intake/test_page*.py): the browser and node.
    command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
fi
# Debian's python3 ships venv without ensurepip unless python3-venv is installed.
if ! { venv_ok && tools_ok; } && ! { python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null; }; then
    pkgs+=(python3-venv)
fi
wanted=("${pkgs[@]}")
[ "$prometheus_missing" = 0 ] || wanted+=(prometheus)
if [ "${#wanted[@]}" -gt 0 ]; then
    need_root "installing ${wanted[*]}"
    say "apt-get update"
    quiet apt-get update
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
    say "installing ${pkgs[*]}"
    quiet apt-get install -y -q "${pkgs[@]}"
    [ "$haproxy_missing" = 0 ] || stop_packaged_service haproxy
fi
if [ "$prometheus_missing" = 1 ]; then
    # Without its recommended node exporter: another daemon, and nothing here scrapes it.
    say "installing prometheus (prometheus, promtool; its service stays stopped)"
    quiet apt-get install -y -q --no-install-recommends prometheus
    stop_packaged_service prometheus
fi

if [ "$skip_services" != 1 ]; then
    need_root "managing RabbitMQ and PostgreSQL"

    # --- RabbitMQ ------------------------------------------------------------
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        say "starting RabbitMQ"
        quiet rabbitmq-server -detached
        for _ in $(seq 60); do
            rabbitmqctl -q status >/dev/null 2>&1 && break
            sleep 1
        done
        quiet rabbitmqctl await_startup --timeout 60
    fi

    # Capture before grepping: with pipefail, grep -q closing the pipe early can fail the test.
    plugins="$(rabbitmq-plugins -q list -e -m 2>/dev/null)" || true
    if ! grep -qx rabbitmq_prometheus <<<"$plugins"; then
        say "enabling RabbitMQ plugin rabbitmq_prometheus"
        quiet rabbitmq-plugins enable rabbitmq_prometheus
    fi

    vhosts="$(rabbitmqctl -q list_vhosts name)"
    if ! grep -qx intake <<<"$vhosts"; then
        say "creating RabbitMQ vhost intake (full permissions for guest)"
        quiet rabbitmqctl add_vhost intake
        quiet rabbitmqctl set_permissions -p intake guest ".*" ".*" ".*"
    fi

    # --- PostgreSQL ----------------------------------------------------------
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        pgver="$(compgen -G '/etc/postgresql/*/main' | sort -V | tail -n 1 | cut -d/ -f4)" || true
        if [ -z "$pgver" ]; then
            pgver="$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n 1 | cut -d/ -f5)"
            say "creating PostgreSQL $pgver cluster main"
            quiet pg_createcluster "$pgver" main
        fi
        say "starting PostgreSQL $pgver"
        quiet pg_ctlcluster --skip-systemctl-redirect "$pgver" main start
        for _ in $(seq 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
        pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL did not come up on 127.0.0.1:5432"
    fi

    role="$(pg_su "SELECT rolcanlogin AND rolcreatedb FROM pg_roles WHERE rolname = 'intake'")"
    if [ -z "$role" ]; then
        say "creating PostgreSQL role intake"
        quiet pg_su "CREATE ROLE intake LOGIN CREATEDB PASSWORD 'intake'"
    elif [ "$role" != t ]; then
        say "granting LOGIN CREATEDB to PostgreSQL role intake"
        quiet pg_su "ALTER ROLE intake LOGIN CREATEDB PASSWORD 'intake'"
    fi

    owner="$(pg_su "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'intake'")"
    if [ -z "$owner" ]; then
        say "creating PostgreSQL database intake"
        quiet pg_su "CREATE DATABASE intake OWNER intake"
    elif [ "$owner" != intake ]; then
        say "making intake the owner of PostgreSQL database intake"
        quiet pg_su "ALTER DATABASE intake OWNER TO intake"
    fi
fi

# --- Python virtualenv ---------------------------------------------------------
if ! venv_ok; then
    say "creating virtualenv $VENV"
    rm -rf "$VENV"
    quiet python3 -m venv "$VENV"
    quiet "$VENV/bin/python" -m pip install --upgrade pip
fi

if [ ! -f "$ROOT/pyproject.toml" ]; then
    say "no pyproject.toml yet; skipping package install"
elif [ "$ROOT/pyproject.toml" -nt "$VENV/.installed" ]; then
    say "installing the project into .venv (editable, with dev extras)"
    quiet "$VENV/bin/python" -m pip install -e "${ROOT}[dev]"
    touch "$VENV/.installed"
fi

# --- kustomize ------------------------------------------------------------------
# The tests render k8s/ with it (tests/test_k8s.py); neither Debian nor PyPI ships it.
if [ -x "$VENV/bin/python" ] && [ ! -x "$VENV/bin/kustomize" ]; then
    say "installing kustomize into $VENV/bin (a pinned release, checked against its hash)"
    quiet "$VENV/bin/python" "$ROOT/scripts/install_kustomize.py" "$VENV/bin"
fi

# --- axe-core -------------------------------------------------------------------
# The page's accessibility check runs it in the browser (tests/intake/test_page_browser.py):
# a pinned release from the npm registry, checked against its integrity hash.
axe_version="$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$ROOT/scripts/install_axe.py")"
if [ -x "$VENV/bin/python" ] && [ ! -f "$VENV/share/axe-core/.version-$axe_version" ]; then
    say "installing axe-core into $VENV/share/axe-core (a pinned release, checked against its hash)"
    quiet "$VENV/bin/python" "$ROOT/scripts/install_axe.py" "$VENV/share/axe-core"
fi

# --- checkov --------------------------------------------------------------------
# tests/test_k8s.py scans the rendered k8s/ with it (PyPI's checkov, pinned); in a virtualenv of
# its own, since it pins dependencies of its own. The marker file names the version installed.
if [ ! -f "$TOOLS/.checkov-$CHECKOV_VERSION" ] || [ ! -x "$TOOLS/bin/checkov" ]; then
    say "installing checkov $CHECKOV_VERSION into $TOOLS"
    if ! tools_ok; then
        rm -rf "$TOOLS"
        quiet python3 -m venv "$TOOLS"
        quiet "$TOOLS/bin/python" -m pip install --upgrade pip
    fi
    quiet "$TOOLS/bin/python" -m pip install "checkov==$CHECKOV_VERSION"
    rm -f "$TOOLS"/.checkov-*
    touch "$TOOLS/.checkov-$CHECKOV_VERSION"
fi

# --- the demo's selfies ----------------------------------------------------------
# Made once per machine (about a minute on 2 cores) and kept in ~/.cache/prakerja-intake, so
# that `make demo` opens its wave at once; a second run finds them in under a second.
if [ -x "$VENV/bin/intake" ]; then
    # Byte-compiled once here, not by a dozen processes at once at the demo's first start.
    quiet "$VENV/bin/python" -m compileall -q "$ROOT/cli" "$ROOT/core" "$ROOT/demo" \
        "$ROOT/intake" "$ROOT/monitoring" "$ROOT/simulators" "$ROOT/verifiers" "$ROOT/workers"
    say "the demo's selfies (made once, then kept in ~/.cache/prakerja-intake)"
    quiet "$VENV/bin/intake" demo --prepare
fi
