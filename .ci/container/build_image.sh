#!/usr/bin/env bash
# Build the bids_ketamine image with podman, or reuse it: the image is tagged with a hash of everything that goes
# into it (Dockerfile, .dockerignore, pyproject.toml, README.md, the lock and the package sources), so a cached
# build is reused exactly when none of these changed. Prints the image reference (last line of stdout).
# Usage: .ci/container/build_image.sh [--force]     (run setup_podman.sh once before)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
IMAGE_NAME="${IMAGE_NAME:-localhost/bids_ketamine}"

version="$(python3 -c 'import runpy,sys; print(runpy.run_path(sys.argv[1])["__version__"])' bids_ketamine/__about__.py)"
inputs_hash="$(
    find Dockerfile .dockerignore pyproject.toml README.md .ci/container/requirements.lock bids_ketamine \
        -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
)"
build_tag="$IMAGE_NAME:build-$inputs_hash"

if [ "${1:-}" != "--force" ] && podman image exists "$build_tag"; then
    echo "build_image.sh: reusing $build_tag (inputs unchanged)" >&2
else
    echo "build_image.sh: building $build_tag (version $version)" >&2
    start=$(date +%s)
    # The machine's certificate bundle and a pip.conf naming it reach the pip steps as build secrets: mounted for
    # those RUN steps only, never written into a layer (a -v mount would leave empty placeholder files behind).
    # --format docker keeps SHELL and gives the format `podman save --format docker-archive` and Apptainer expect.
    # shellcheck disable=SC2086  # PODMAN_BUILD_EXTRA: extra words on purpose (e.g. --no-cache)
    podman build --isolation chroot --layers --format docker \
        --secret id=ca_bundle,src="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" \
        --secret id=pip_conf,src="$here/pip.conf" \
        --build-arg VERSION="$version" ${PODMAN_BUILD_EXTRA:-} \
        -t "$build_tag" -t "$IMAGE_NAME:$version" -f Dockerfile . >&2
    echo "build_image.sh: built in $(( $(date +%s) - start )) s" >&2
fi
podman tag "$build_tag" "$IMAGE_NAME:$version"
# Drop earlier builds of this image (each holds ~1 GB once the package changed); the layer cache of the
# dependencies stage is kept, so the next build only redoes the package.
podman images --format '{{.Repository}}:{{.Tag}}' "$IMAGE_NAME" \
    | grep -E ':build-[0-9a-f]+$' | grep -vx "$build_tag" | xargs -r podman rmi >/dev/null 2>&1 || true
echo "$build_tag"
