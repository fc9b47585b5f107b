# syntax=docker/dockerfile:1
# The agent's and the operator's images, for machines with a container
# engine: `docker build --target agent -t localhost/axoneme/agent:0.1.0 .`
# (and `--target operator`). `cargo xtask image` writes the same images as
# OCI archives without an engine (target/images/); its test runs the
# operator from its layer alone.

# Build: Debian's toolchain for the eBPF programs (rustc-web, bpf-linker on
# LLVM 22, see ../shared/design/ARCHITECTURE.md), the release binaries.
FROM debian:bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      ca-certificates curl build-essential pkg-config protobuf-compiler libprotobuf-dev \
      rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked \
      --no-default-features --features llvm-22 --root /src/.tools \
 && cargo xtask build-bpf \
 && cargo build --release --bins \
 && mkdir -p /out \
 && for b in axoneme-agent axoneme axoneme-cni axoneme-operator; do \
      strip --strip-debug -o /out/$b target/release/$b; done

# The agent runs as root with the capabilities the chart grants (no
# `privileged`); distroless/cc has the glibc and libgcc it links.
FROM gcr.io/distroless/cc-debian12 AS agent
COPY --from=build /out/axoneme-agent /out/axoneme /out/axoneme-cni /usr/bin/
LABEL org.opencontainers.image.title=axoneme-agent \
      org.opencontainers.image.licenses=Apache-2.0
USER 0:0
ENTRYPOINT ["/usr/bin/axoneme-agent"]

# The operator needs no privilege at all.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/axoneme-operator /usr/bin/
LABEL org.opencontainers.image.title=axoneme-operator \
      org.opencontainers.image.licenses=Apache-2.0
USER 65532:65532
ENTRYPOINT ["/usr/bin/axoneme-operator"]
