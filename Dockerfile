# syntax=docker/dockerfile:1
#
# shoplazza-upload-exporter container image.
#
#   docker build -t shoplazza-upload-exporter .
#   docker run --rm -p 9877:9877 \
#     -v "$PWD/config.yaml:/etc/shoplazza-upload-exporter/config.yaml:ro" \
#     shoplazza-upload-exporter
#
# Stage 1 builds the wheel of this project; stage 2 installs the runtime dependencies
# exactly as pinned, with their hashes, in requirements.lock (--require-hashes), then the
# wheel alone (--no-deps, by its path, which also keeps hadolint's DL3013 quiet), into a
# slim image that runs as a fixed non-root uid/gid (65532, as in distroless "nonroot").
# Regenerate the lock after changing dependencies in pyproject.toml (docs/operations.md,
# "Container image"):
#   uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements.lock

FROM python:3.12-slim-bookworm AS build
# The build context has no .git: pass the commit for build_info's revision label,
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" .
# (left empty when not given; docs/packaging.md).
ARG REVISION=""
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY exporter ./exporter
RUN SHOPLAZZA_EXPORTER_REVISION="${REVISION}" pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# COPY rather than a BuildKit bind mount, so the legacy builder builds it too.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /tmp/wheels/shoplazza_upload_exporter-*.whl \
    && rm -rf /tmp/wheels /tmp/requirements.lock \
    && groupadd --system --gid 65532 exporter \
    && useradd --system --no-log-init --uid 65532 --gid 65532 --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter \
    && mkdir -p /etc/shoplazza-upload-exporter /var/lib/shoplazza-upload-exporter \
    && chown 65532:65532 /var/lib/shoplazza-upload-exporter
USER 65532:65532
WORKDIR /var/lib/shoplazza-upload-exporter
EXPOSE 9877
# The slim image has no curl or wget, so the check uses the image's own Python.
# It assumes plain HTTP without auth on 127.0.0.1:9877. With --web.config.file enabling
# basic auth, send an Authorization header in the request; with TLS, use https:// and an
# ssl context; with mutual TLS (client certificates required) replace it with a TCP connect
# check, e.g. socket.create_connection(("127.0.0.1", 9877), 2). Change the port too if you
# change --web.listen-address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9877/-/healthy', timeout=2)"]
ENTRYPOINT ["shoplazza-upload-exporter"]
CMD ["--config.file=/etc/shoplazza-upload-exporter/config.yaml"]
