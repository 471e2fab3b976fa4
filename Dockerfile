# syntax=docker/dockerfile:1
# lcs-serve: the daemon, its default model, CPU torch; non-root, read-only-root friendly.
#   docker build -t lcs-serve:0.1.0 .
# Without a registry (this project's CI machines) see deploy/container/image-test.sh: it builds
# a local Debian base and passes --build-arg BASE_IMAGE=... and a local torch wheel directory.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
# python:*-slim has Python; a bare Debian base gets Debian 12's Python 3.11.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends python3 python3-venv \
        ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Where the CPU build of torch comes from: the PyTorch CPU index by default (any arch: x86_64
# and arm64 wheels exist); TORCH_FIND_LINKS adds a local wheel directory, whose 2.13.0+cpu
# outranks PyPI's 2.13.0 (its dependencies still come from PyPI).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
# An extra CA bundle for pip (a TLS-inspecting proxy's), mounted at build time; empty: none.
ARG PIP_CA=
RUN python3 -m venv /opt/venv
RUN if [ -n "$PIP_CA" ]; then export PIP_CERT="$PIP_CA"; fi; \
    if [ -n "$TORCH_FIND_LINKS" ]; then \
      /opt/venv/bin/pip install --find-links "$TORCH_FIND_LINKS" torch==2.13.0; \
    else \
      /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi
# The dependencies (and setuptools, to build the project below without an index) from
# pyproject.toml alone: this stage, and the 1.3 GB venv the runtime copies from it, change only
# when pyproject.toml does, not with every change to the sources.
COPY pyproject.toml /src/
RUN if [ -n "$PIP_CA" ]; then export PIP_CERT="$PIP_CA"; fi; \
    /opt/venv/bin/python -c "import tomllib; d = tomllib.load(open('/src/pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies'] + d['build-system']['requires']))" \
      > /tmp/requirements.txt && \
    /opt/venv/bin/pip install -r /tmp/requirements.txt && \
    find /opt/venv -name "__pycache__" -prune -exec rm -rf {} + && \
    rm -rf /opt/venv/lib/python3*/site-packages/torch/include

FROM python AS runtime
RUN (command -v useradd >/dev/null || (apt-get update && apt-get install -y passwd)) && \
    useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin lcs
COPY --from=deps /opt/venv /opt/venv
# The project itself: a few MB, the only layers a change to the sources rebuilds. Everything it
# needs is in the venv already, so no index is asked (--no-deps --no-build-isolation).
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY controller /src/controller
COPY server /src/server
RUN PIP_NO_CACHE_DIR=1 /opt/venv/bin/pip install --quiet --disable-pip-version-check \
      --no-deps --no-build-isolation /src && rm -rf /src
# numba's compiled LCS+L pruning pass (models/fused.py) is cached in /tmp, the pod's writable
# emptyDir under a read-only root: a restarted container reuses it instead of compiling again.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba LCS_HOST=0.0.0.0 LCS_PORT=8000
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Exec form: `lcs` is PID 1 and receives SIGTERM itself (the drain needs it).
ENTRYPOINT ["lcs", "serve", "--host", "0.0.0.0"]
