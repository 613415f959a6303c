# syntax=docker/dockerfile:1
# codex-stdio-bus, codex-worker and codex-mock in one image, with Codex itself for the workers.
#   docker build -t codex-stdio-bus .
#   docker run --rm -p 8765:8765 -v codex-bus-state:/var/lib/codex-bus \
#     -v "$PWD/bus.json:/etc/codex-stdio-bus/config.json:ro" codex-stdio-bus
# Deployments: docs/deploy/kubernetes/ and docs/scale-out.md. tests/tests/deploy_docs.rs checks
# this file's shape, and builds it where `docker info` answers.

# --- 1. Build the workspace's binaries (release) -------------------------------------------------
# The workspace's rust-version (Cargo.toml) is the floor; Debian 12 matches the runtime's glibc.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions that were tested (Cargo.lock).
RUN cargo build --release --locked --bins \
        -p codex-stdio-bus -p codex-worker -p codex-mock \
    && mkdir -p /out \
    && cp target/release/codex-stdio-bus target/release/codex-worker target/release/codex-mock /out/

# --- 2. Codex, which codex-worker runs as `codex app-server` --------------------------------------
# The npm package ships a native binary per platform; no install scripts are needed.
FROM node:22-bookworm-slim AS codex
ARG CODEX_VERSION=0.169.0
WORKDIR /codex
RUN npm install --ignore-scripts --no-audit --no-fund "@openai/codex@${CODEX_VERSION}" \
    && cp "$(find node_modules/@openai -path '*/vendor/*/bin/codex' -type f | head -n 1)" /codex/codex

# --- 3. Runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: Codex reaches its model provider over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 codex-bus \
    && useradd --system --uid 10001 --gid codex-bus --home-dir /var/lib/codex-bus \
        --shell /usr/sbin/nologin codex-bus \
    && mkdir -p /var/lib/codex-bus /etc/codex-stdio-bus \
    && chown codex-bus:codex-bus /var/lib/codex-bus
COPY --from=build /out/codex-stdio-bus /out/codex-worker /out/codex-mock /usr/local/bin/
COPY --from=codex /codex/codex /usr/local/bin/codex
USER 10001:10001
# codex-worker's per-slot CODEX_HOME and thread state (--state-dir): a volume, so threads outlive
# the container (in Kubernetes, one PersistentVolumeClaim per pod).
ENV XDG_STATE_HOME=/var/lib/codex-bus
VOLUME ["/var/lib/codex-bus"]
WORKDIR /var/lib/codex-bus
# 8765: WebSocket (--ws); 7000: NDJSON over TCP; 9464: /metrics, /healthz, /readyz, /status.
EXPOSE 8765 7000 9464
# The daemon is PID 1, with no shell in between: `docker stop`'s SIGTERM reaches it and starts the
# drain (drain_grace_sec, then drain_timeout_sec: give `docker stop -t` at least 45 s). As PID 1
# it also reaps orphans, which it does anyway as a child subreaper.
# No HEALTHCHECK: the slim image has no HTTP client, and orchestrators probe /healthz and /readyz
# themselves (docs/deploy/kubernetes/).
ENTRYPOINT ["codex-stdio-bus"]
CMD ["--config", "/etc/codex-stdio-bus/config.json", "--log-format", "json"]
