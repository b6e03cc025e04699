# syntax=docker/dockerfile:1
#
# The `alleycat` binary in a small Debian image, run as a non-root user.
# One image for every service; the command chooses which one runs:
#
#     docker build -t alleycat .
#     docker run -p 8080:8080 alleycat                 # the all-in-one (embedded storage)
#     docker run -e ALLEYCAT_STREAM=kinesis -e ALLEYCAT_STORE=s3 ... alleycat ingest
#
# (`transformer`, `history`, `rankings`, `token` likewise; `--help` lists
# every setting.) infra/aws/alleycat.yaml runs it on ECS Fargate.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The whole workspace: cargo reads every member's manifest and target.
COPY . .
# The registry and the target directory are cache mounts, so a rebuild after
# a source change compiles only the workspace's own crates. The binary is
# copied out of the cache mount, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p alleycat --bin alleycat \
    && install -m 0755 target/release/alleycat /usr/local/bin/alleycat

# ---------------------------------------------------------------- run
FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: the AWS SDK's TLS verifies against the system's roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 alleycat \
    && useradd --system --uid 10001 --gid alleycat --home-dir /var/lib/alleycat \
        --shell /usr/sbin/nologin alleycat \
    && install -d -o alleycat -g alleycat -m 0750 /var/lib/alleycat
COPY --from=build /usr/local/bin/alleycat /usr/local/bin/alleycat

# Listen on every interface (the binary's default, 127.0.0.1, is unreachable
# from outside a container); the embedded backends keep their data in the
# user's own directory (a volume, for the all-in-one).
ENV ALLEYCAT_LISTEN=0.0.0.0:8080 \
    ALLEYCAT_DATA_DIR=/var/lib/alleycat
WORKDIR /var/lib/alleycat
VOLUME /var/lib/alleycat
EXPOSE 8080
USER 10001:10001

# SIGTERM (docker stop, ECS) stops it gracefully: ingest stops taking
# records, the transformer delivers what it buffers.
STOPSIGNAL SIGTERM
ENTRYPOINT ["alleycat"]
# No argument: the whole backend in one process. `ingest`, `transformer`,
# `history` or `rankings`: that service alone.
CMD []
