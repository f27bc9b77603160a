# syntax=docker/dockerfile:1
# kubelisten container image: a static (musl) kubelisten binary and the example listener
# modules on a distroless, non-root base.
#
#   docker build -t REGISTRY/kubelisten:TAG .
#
# Not built or tested on the project's own machines (no container builder there); CI or a
# workstation with Docker/Podman/BuildKit builds it. See deploy/README.md.

ARG RUST_VERSION=1.90
ARG ALPINE_VERSION=3.22

# --- host: the kubelisten binary, statically linked against musl --------------------------
FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS host
# gcc + musl-dev: ring and wasmtime build a little C/assembly.
RUN apk add --no-cache gcc musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY host ./host
COPY wit ./wit
# On Alpine the native target is x86_64/aarch64-unknown-linux-musl, static by default.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kubelisten --bin kubelisten \
 && cp target/release/kubelisten /kubelisten \
 && strip /kubelisten \
 && ! ldd /kubelisten 2>/dev/null | grep -q '=>'

# --- guests: the example listener components (wasm32-wasip2) -----------------------------
FROM rust:${RUST_VERSION}-alpine${ALPINE_VERSION} AS guests
RUN apk add --no-cache gcc musl-dev \
 && rustup target add wasm32-wasip2
WORKDIR /src
COPY wit ./wit
COPY guests ./guests
# The modules deploy/ packages (superpod, rust-logger); `make guests` builds them all.
ARG GUESTS="superpod rust-logger"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/guests/target \
    cd guests \
 && cargo build --release --locked --target wasm32-wasip2 $(for g in $GUESTS; do printf -- '-p %s ' "$g"; done) \
 && mkdir -p /modules \
 && for g in $GUESTS; do cp "target/wasm32-wasip2/release/$(echo "$g" | tr - _).wasm" "/modules/$g.wasm"; done

# --- runtime: distroless static, non-root (uid/gid 65532), CA certificates, no shell -------
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=host /kubelisten /usr/local/bin/kubelisten
COPY --from=guests /modules/ /usr/share/kubelisten/modules/
USER 65532:65532
# Health, readiness, metrics (--health-port / KUBELISTEN_HEALTH_PORT). /status listens on
# loopback (--status-bind, 127.0.0.1:8081): not exposed.
EXPOSE 8080
# The root filesystem can stay read-only: point the compiled-code cache at a writable volume
# (the Deployment mounts an emptyDir here).
ENV KUBELISTEN_CACHE_DIR=/var/cache/kubelisten
ENTRYPOINT ["/usr/local/bin/kubelisten"]
CMD ["run"]
