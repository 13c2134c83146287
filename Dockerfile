# tagcast in a container: docs/operations.md, "Installing", "The container image".
#
#   docker build -t tagcast .
#   docker run -d --name tagcast -p 8080:8080 --stop-timeout 45 \
#     -v tagcast-data:/var/lib/tagcast \
#     -v /etc/tagcast/tagcast.toml:/etc/tagcast/tagcast.toml:ro tagcast
#
# The image needs a configuration file with [[accounts]]: it listens on 0.0.0.0, and
# without accounts `tagcast serve` refuses any non-loopback address, because the
# development credentials it would generate must never be reachable from the network.

FROM rust:1-bookworm AS build
WORKDIR /src
# .dockerignore lets in only Cargo.toml, Cargo.lock and src/: no local data directory
# (with its development credentials) and no target/ reach the build.
COPY . .
# Without the default `bench` feature: the server links no load generator, chart library
# or test-server code.
RUN cargo build --release --locked --no-default-features --bin tagcast

FROM debian:bookworm-slim
# ca-certificates: the system CAs that verify PostgreSQL (sslmode=verify-full), Redis
# (rediss://) and https:// webhooks when no CA file is configured.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/tagcast \
      --shell /usr/sbin/nologin tagcast \
 && install -d -o tagcast -g tagcast -m 0700 /var/lib/tagcast \
 && install -d -m 0755 /etc/tagcast
COPY --from=build /src/target/release/tagcast /usr/local/bin/tagcast

# The variables win over the file: whatever listen and data_dir the mounted file names,
# the server listens where EXPOSE and HEALTHCHECK expect it and keeps its data in the
# volume.
ENV TAGCAST_LISTEN=0.0.0.0:8080 \
    TAGCAST_DATA_DIR=/var/lib/tagcast \
    TAGCAST_CONFIG=/etc/tagcast/tagcast.toml
USER tagcast
WORKDIR /var/lib/tagcast
VOLUME /var/lib/tagcast
EXPOSE 8080
# Exit 0 only while GET /readyz answers 200: the store can write.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
  CMD ["tagcast", "ready", "--endpoint", "http://127.0.0.1:8080"]
# SIGTERM drains in-flight requests for up to http.shutdown_grace_secs (30 s): stop the
# container with a longer timeout than Docker's default 10 s (--stop-timeout above).
STOPSIGNAL SIGTERM
# `tagcast` as the entry point and `serve` as the default command, so that the operator's
# commands run from the same image: docker exec tagcast tagcast backup --to ...
ENTRYPOINT ["tagcast"]
CMD ["serve"]
