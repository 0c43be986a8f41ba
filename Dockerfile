# pgsluice container image.
#
#   docker build -t pgsluice:dev --build-arg VERSION=$(git describe --always --dirty) .
#
# Configuration: mount a file at /etc/pgsluice/pgsluice.yaml (the entrypoint
# passes --config when it exists) and/or set PGSLUICE_* environment variables
# (every key; they override the file). With neither, pgsluice refuses to
# start because primary.host has no default:
#
#   docker run -p 6432:6432 -p 9930:9930 \
#     -e PGSLUICE_PRIMARY_HOST=db.internal -e PGSLUICE_AUTH_USERS=app:secret pgsluice:dev
#
# The image listens on 0.0.0.0:6432 (clients) and 0.0.0.0:9930 (admin HTTP:
# /healthz, /readyz, /metrics). The HEALTHCHECK probes 127.0.0.1:9930: keep
# admin.listen on port 9930 (any address that includes loopback).
#
# deploy/deploy_test.go checks this file's structure and runs its go build
# line, its entrypoint and its health check against the resulting binary.

ARG GO_VERSION=1.26

# ---- build: cgo is required (pg_query_go compiles PostgreSQL's parser) ----
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pgsluice ./cmd/pgsluice
# Fail the build, not the deployment, when the binary cannot start.
RUN /out/pgsluice --version

# ---- runtime: glibc (the cgo binary links libc only) + curl for HEALTHCHECK ----
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pgsluice \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgsluice \
 && mkdir -p /etc/pgsluice
COPY --from=build /out/pgsluice /usr/local/bin/pgsluice
# Listen on every interface inside the container; the file or other
# PGSLUICE_* variables may still set everything else.
ENV PGSLUICE_LISTEN=0.0.0.0:6432 \
    PGSLUICE_ADMIN_LISTEN=0.0.0.0:9930
# Numeric so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 6432 9930
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:9930/healthz
# exec keeps pgsluice as PID 1, so it receives SIGTERM and drains.
ENTRYPOINT ["/bin/sh", "-c", "if [ -f /etc/pgsluice/pgsluice.yaml ]; then set -- --config /etc/pgsluice/pgsluice.yaml \"$@\"; fi; exec /usr/local/bin/pgsluice \"$@\"", "pgsluice"]
CMD []
STOPSIGNAL SIGTERM
