# shardgate container image: build with the release profile, run as a non-root user on a slim base.
#
#   docker build -t shardgate .
#   docker run --rm -p 9080:9080 -p 9090:9090 --ulimit memlock=8388608 \
#       --security-opt seccomp=unconfined \
#       -v $PWD/config.yaml:/etc/shardgate/config.yaml:ro shardgate
#
# io_uring: Docker's default seccomp profile blocks io_uring_setup, so without a profile that allows
# io_uring_setup, io_uring_enter and io_uring_register (or seccomp=unconfined) shardgate runs on its
# epoll fallback and logs why. On kernels before 5.12 the rings also count against RLIMIT_MEMLOCK,
# hence --ulimit memlock. The admin listener (9090) must listen on 0.0.0.0 in the config to be
# published; keep that port off public networks.

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# rust-toolchain.toml is left out on purpose: the image's toolchain is the one to use.
COPY Cargo.toml Cargo.lock ./
COPY runtime runtime
COPY oidc oidc
COPY gateway gateway
COPY benches benches
RUN cargo build --release --locked -p shardgate-gateway \
    && install -m 0755 target/release/shardgate /usr/local/bin/shardgate

FROM debian:bookworm-slim AS runtime
# CA certificates: the identity provider is usually reached over https.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin shardgate \
    && mkdir -p /etc/shardgate
COPY --from=build /usr/local/bin/shardgate /usr/local/bin/shardgate
# A working default; mount your own over it.
COPY examples/plain-proxy.yaml /etc/shardgate/config.yaml
USER shardgate:shardgate
EXPOSE 9080 9443 9090
STOPSIGNAL SIGTERM
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/shardgate"]
CMD ["run", "-c", "/etc/shardgate/config.yaml", "--log-format", "json"]
