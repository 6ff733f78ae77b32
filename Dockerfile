# flashcoupon service image: build with the Rust toolchain, run on slim Debian.
#   docker build -t flashcoupon .
#   docker run --rm flashcoupon --help
# docker-compose.yml builds it for the `flashcoupon` and `migrate` services.

FROM rust:1-bookworm AS builder
WORKDIR /build
# rdkafka-sys compiles librdkafka from source (make and gcc come with the image);
# zlib headers for its compression support, OpenSSL's for TLS and SASL/SCRAM.
RUN apt-get update \
    && apt-get install -y --no-install-recommends zlib1g-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# No BuildKit-only syntax, so the classic builder of docker-compose v1 works too.
RUN cargo build --release --locked --bin flashcoupon \
    && cp target/release/flashcoupon /usr/local/bin/flashcoupon

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl zlib1g libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home flashcoupon
COPY --from=builder /usr/local/bin/flashcoupon /usr/local/bin/flashcoupon
USER flashcoupon
ENV FLASHCOUPON__SERVER__HOST=0.0.0.0 \
    FLASHCOUPON__SERVER__PORT=8080 \
    FLASHCOUPON__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health/live || exit 1
ENTRYPOINT ["flashcoupon"]
CMD ["serve"]
