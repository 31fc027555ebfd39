# syntax=docker/dockerfile:1
# catapult-gateway, production image. Settings come only from the environment
# (GATEWAY_*, OTEL_EXPORTER_OTLP_ENDPOINT; see the README's Configuration table):
#   docker build -t catapult-gateway .
#   docker run -p 8000:8000 -e GATEWAY_WORKERS=2 catapult-gateway
#
# Base images are pinned to exact version tags. Pin them by digest as well where you
# build (`docker buildx imagetools inspect <tag>` prints it): it could not be looked up
# where this file was written.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# --- GraphiQL's pinned files, so the gateway serves them itself (no CDN at run time).
# The versions must match gateway/graphiql.py (a test checks); the build stage checks
# each file against the Subresource Integrity hash pinned there.
FROM ${NODE_IMAGE} AS graphiql
WORKDIR /assets
RUN npm pack --silent react@18.3.1 react-dom@18.3.1 graphiql@3.8.3 \
 && mkdir -p vendor \
 && for tarball in react-18.3.1 react-dom-18.3.1 graphiql-3.8.3; do \
      mkdir "$tarball" && tar -xzf "$tarball.tgz" -C "$tarball" --strip-components=1; \
    done \
 && cp react-18.3.1/umd/react.production.min.js react-dom-18.3.1/umd/react-dom.production.min.js \
       graphiql-3.8.3/graphiql.min.js graphiql-3.8.3/graphiql.min.css vendor/

# --- The virtual environment: dependencies first, so that a source change reuses them.
FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/venv PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv "$VIRTUAL_ENV"
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" > requirements.txt \
 && "$VIRTUAL_ENV/bin/pip" install -r requirements.txt
COPY README.md ./
COPY gateway ./gateway
COPY --from=graphiql /assets/vendor ./gateway/static/vendor
RUN --mount=type=cache,target=/root/.cache/pip \
    "$VIRTUAL_ENV/bin/python" -c "import base64, hashlib, sys; from gateway.graphiql import ASSETS, DEFAULT_STATIC_DIR as d; bad = [a.name for a in ASSETS if a.integrity != 'sha384-' + base64.b64encode(hashlib.sha384((d / a.name).read_bytes()).digest()).decode()]; sys.exit(f'GraphiQL files fail their integrity check: {bad}' if bad else 0)" \
 && "$VIRTUAL_ENV/bin/pip" install --no-deps .

# --- The image: the virtual environment and nothing else, run as a fixed non-root user.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["catapult-gateway", "serve", "--host", "0.0.0.0"]
