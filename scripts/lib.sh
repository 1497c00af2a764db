# Helpers shared by the setup scripts (sourced, not run). The sourcing script sets TAG first:
# every line these print starts with it.

say() { echo "$TAG: $*"; }
die() { echo "$TAG: error: $*" >&2; exit 1; }

# Run a noisy command silently; show its output only if it fails.
quiet() {
    local log rc=0
    log="$(mktemp)"
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$TAG: command failed ($rc): $*" >&2
        cat "$log" >&2
        rm -f "$log"
        exit "$rc"
    fi
    rm -f "$log"
}
