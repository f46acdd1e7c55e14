#!/usr/bin/env bash
# Regenerate .ci/container/requirements.lock: resolve pyproject.toml's dependencies afresh in the Dockerfile's
# "resolver" stage (Debian's python3, network needed), copy pip's choice into the lock, then build the image.
# Run after changing dependencies in pyproject.toml (the build fails with a pointer here when the lock lacks one);
# commit the new lock.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
lock="$here/requirements.lock"
tag=localhost/bids_ketamine-resolver:latest
podman build --isolation chroot --layers --format docker --target resolver \
    --secret id=ca_bundle,src="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" \
    --secret id=pip_conf,src="$here/pip.conf" \
    -t "$tag" -f Dockerfile . >&2
{
    echo "# Exact versions of every Python package in the container image (pip freeze of the image's venv)."
    echo "# Regenerate with .ci/container/update_lock.sh after a dependency change in pyproject.toml."
    podman run --rm --network none --entrypoint cat "$tag" /opt/bids_ketamine/requirements.resolved
} > "$lock.new"
mv "$lock.new" "$lock"
podman rmi "$tag" >/dev/null 2>&1 || true
echo "update_lock.sh: $(grep -vc '^#' "$lock") packages pinned in $lock" >&2
"$here/build_image.sh"
