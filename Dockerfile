# A small non-root image with the `als2otel` entry point. BASE: a Debian-based image with CPython
# 3.11+ and its venv module (python:3.11-slim by default; Debian's own with python3-venv builds
# too); the build stage installs a C compiler with apt to compile the per-entry modules.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Where a proxy re-signs TLS: pip's CA bundle (mount it at build time, e.g. buildah's --volume).
ARG PIP_CERT
# A C compiler and Python's headers for the per-entry modules setup.py compiles (this stage only).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
 && { python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_path("include") + "/Python.h")' \
      || apt-get install -y -qq --no-install-recommends python3-dev >/dev/null; }
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN python3 -m venv /opt/als2otel && /opt/als2otel/bin/pip install --no-cache-dir --quiet . \
 && /opt/als2otel/bin/python -c 'import als2otel.translation.wire as m, als2otel.receiver._entries, als2otel.translation._spans; assert m.__file__.endswith(".so"), "not compiled"' \
 && /opt/als2otel/bin/pip uninstall --quiet --yes pip setuptools

FROM ${BASE}
RUN useradd --system --uid 10001 --no-create-home als2otel
COPY --from=build /opt/als2otel /opt/als2otel
COPY config/als2otel.yaml /etc/als2otel/als2otel.yaml
ENV PATH=/opt/als2otel/bin:$PATH PYTHONDONTWRITEBYTECODE=1
USER 10001
# ALS gRPC, HTTP (/metrics, /healthz, /readyz)
EXPOSE 11800 9464
ENTRYPOINT ["als2otel"]
CMD ["serve", "--config", "/etc/als2otel/als2otel.yaml"]
