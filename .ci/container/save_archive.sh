#!/usr/bin/env bash
# Write the image as a docker archive, the input of `apptainer build bids_ketamine.sif docker-archive://FILE`.
# Usage: .ci/container/save_archive.sh IMAGE_REF OUT.tar
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
podman save --format docker-archive -o "$2" "$1"
echo "$2"
