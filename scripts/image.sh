#!/usr/bin/env bash
# Build the project's image (Containerfile) with podman, or docker where that is what the
# machine has (a docker client whose daemon answers; else podman is installed). Idempotent;
# what is missing is set up first:
#
#   - podman (Debian's), as root, when neither engine is installed;
#   - the base image, when it is not there: made locally with debootstrap (Debian 12, minbase,
#     python3 and python3-venv) and imported, since no registry may be reachable; any Debian 12
#     image with python3 and python3-venv can be given instead (INTAKE_IMAGE_BASE);
#   - the wheels of the project and of every dependency, into build/wheels (pip wheel, from
#     the .venv that `make setup` makes): the image build itself needs no network.
#
#   scripts/image.sh
#
# Environment: INTAKE_IMAGE (the tag, default localhost/prakerja-intake:latest),
# INTAKE_IMAGE_BASE (default localhost/intake-base:bookworm), INTAKE_DEBIAN_MIRROR (for
# debootstrap, default http://deb.debian.org/debian).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${INTAKE_IMAGE:-localhost/prakerja-intake:latest}"
BASE="${INTAKE_IMAGE_BASE:-localhost/intake-base:bookworm}"
MIRROR="${INTAKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WHEELS="$ROOT/build/wheels"

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/scripts/containers.conf}"

TAG=image
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

apt_install() {
    [ "$(id -u)" -eq 0 ] || die "installing $* needs root"
    say "installing $*"
    quiet apt-get update
    quiet apt-get install -y -q --no-install-recommends "$@"
}

# --- the engine -----------------------------------------------------------------------------
if command -v podman >/dev/null 2>&1; then
    engine=podman
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker # a docker whose daemon answers; a bare docker client is not enough
else
    # runc: see scripts/containers.conf; uidmap, slirp4netns: podman's usual companions.
    apt_install podman runc uidmap slirp4netns
    engine=podman
fi

# --- the base image -------------------------------------------------------------------------
if ! "$engine" image inspect "$BASE" >/dev/null 2>&1; then
    [ "$BASE" = localhost/intake-base:bookworm ] || die "base image $BASE not found"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    say "making the base image $BASE with debootstrap (a few minutes, once)"
    quiet debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | quiet "$engine" import - "$BASE"
    rm -rf "$rootfs"
    trap - EXIT
fi

# --- the wheels -----------------------------------------------------------------------------
[ -x "$ROOT/.venv/bin/pip" ] || die "no .venv: run make setup first"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/prakerja_intake-*.whl # the project's own: always this tree's
rm -rf "$ROOT/build/lib" # setuptools' staging area: a stale file there would land in the wheel
say "building the wheels (build/wheels)"
quiet "$ROOT/.venv/bin/pip" wheel --quiet --wheel-dir "$WHEELS" "$ROOT"

# --- the image ------------------------------------------------------------------------------
say "building $IMAGE from $BASE"
quiet "$engine" build --network=none --build-arg "BASE=$BASE" -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT"
# The build stage and the images this tag replaced, now untagged (labelled by the Containerfile).
quiet "$engine" image prune --force --filter label=io.prakerja-intake.build=1
say "built $IMAGE"
