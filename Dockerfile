# Multi-stage build of the `dals` binary.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the workspace manifest names: the worker client (a member and a dev-dependency)
# and the declared benchmark, or cargo refuses to load the manifest.
COPY Cargo.toml Cargo.lock ./
COPY client ./client
COPY benches ./benches
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
RUN cargo build --release --locked --bin dals

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dals /usr/local/bin/dals
USER nobody
ENV DALS_SERVER__HOST=0.0.0.0 \
    DALS_SERVER__PORT=8003 \
    DALS_LOG__FORMAT=json
EXPOSE 8003
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8003/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/dals"]
CMD ["serve"]
