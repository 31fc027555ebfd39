# syntax=docker/dockerfile:1
# catapult-gateway, production image. Settings come only from the environment
# (GATEWAY_*, OTEL_EXPORTER_OTLP_ENDPOINT; see the README's Configuration table):
#   docker build -t catapult-gateway .
#   docker run -p 8000:8000 -e GATEWAY_WORKERS=2 catapult-gateway
#   docker run -p 127.0.0.1:8000:8000 catapult-gateway serve --host 0.0.0.0 --sandbox
# The entrypoint is the `catapult-gateway` command, so arguments after the image name are
# its subcommand and flags; the default is `serve --host 0.0.0.0`.
#
# The base image is pinned to an exact version tag. Pin it by digest as well where you
# build (`docker buildx imagetools inspect <tag>` prints it): it could not be looked up
# where this file was written.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# --- The virtual environment: dependencies first, so that a source change reuses them.
FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/venv PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
# Exact versions with hashes (`uv pip compile --generate-hashes`, see the README): the same
# dependencies on every build, and pip refuses any file whose hash is not in the lock.
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    "$VIRTUAL_ENV/bin/pip" install --require-hashes -r requirements.lock
# The build backend (hatchling and what it needs), pinned and hashed the same way, in a
# virtual environment of its own that the image never gets.
COPY requirements-build.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/build-venv \
 && /opt/build-venv/bin/pip install --require-hashes -r requirements-build.lock
# The package, GraphiQL's pinned files (gateway/static/vendor/) included: the gateway
# serves them itself, no CDN and no npm needed. Built without build isolation, so pip
# fetches no unpinned backend: the wheel comes from the backend installed above.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build-venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /opt/wheels . \
 && "$VIRTUAL_ENV/bin/pip" install --no-deps --no-index /opt/wheels/catapult_gateway-*.whl

# --- The image: the virtual environment and nothing else, run as a fixed non-root user.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/healthcheck.py
ENV PATH="/opt/venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
# The probe asks the kernel which port the entrypoint (PID 1) listens on, so it follows
# `--port` as well as GATEWAY_PORT.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "/opt/healthcheck.py"]
ENTRYPOINT ["catapult-gateway"]
CMD ["serve", "--host", "0.0.0.0"]
