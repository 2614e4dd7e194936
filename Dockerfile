# syntax=docker/dockerfile:1
# The `anom` binary (coordinator, worker and CLI) in a slim Debian image.
#   docker build -t ghcr.io/anom-dev/anom:0.1.0 .
# The Kubernetes manifests in k8s/ run this image as user 10001 with a read-only root
# filesystem; state lives on the volumes mounted under /var/lib/anom.

FROM rust:1.91-slim-bookworm AS build
# protoc, in case a crate generates gRPC code at build time (harmless otherwise).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep the registry and the compiled dependencies between builds; the binary is
# copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p anom \
    && cp target/release/anom /usr/local/bin/anom

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 anom \
    && useradd --system --uid 10001 --gid anom --home-dir /var/lib/anom --no-create-home anom \
    && mkdir -p /var/lib/anom \
    && chown anom:anom /var/lib/anom
COPY --from=build /usr/local/bin/anom /usr/local/bin/anom
USER 10001:10001
WORKDIR /var/lib/anom
# gRPC API (coordinator), metrics and health (coordinator 9090, worker 9091).
EXPOSE 50051 9090 9091
ENTRYPOINT ["/usr/local/bin/anom"]
CMD ["--help"]
