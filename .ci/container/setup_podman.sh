#!/usr/bin/env bash
# Make podman able to build and run the bids_ketamine image on a CI machine without a Docker engine or access to
# the public image registry (ENGINEERING.md "Containers can be built and run here"). Idempotent; needs root.
#   1. apt packages podman buildah runc debootstrap
#   2. CONTAINERS_CONF -> .ci/container/containers.conf (runc, ulimits this machine grants)
#   3. a local docker.io/library/debian:bookworm-slim made with debootstrap + podman import
# Usage: sudo .ci/container/setup_podman.sh   (then: export CONTAINERS_CONF=$PWD/.ci/container/containers.conf)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="$here/containers.conf"
BASE_IMAGE="${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}"
SUITE="${DEBIAN_SUITE:-bookworm}"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup_podman.sh: must run as root (apt-get, debootstrap)" >&2
    exit 77
fi

missing=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup_podman.sh: installing ${missing[*]} with apt-get"
    # other jobs on a shared machine may hold the dpkg lock: wait for it instead of failing
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
        podman buildah runc debootstrap >/dev/null
fi

if podman image exists "$BASE_IMAGE"; then
    echo "setup_podman.sh: base image $BASE_IMAGE present"
else
    rootfs="$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    echo "setup_podman.sh: debootstrap $SUITE -> $BASE_IMAGE"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    # keep the stand-in close to the official slim image: no apt lists, no docs
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    echo "setup_podman.sh: imported $BASE_IMAGE"
fi
podman --version
