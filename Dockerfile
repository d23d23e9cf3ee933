# One image for the operator and the data plane:
#   hookline-operator, hookline-receiver, hookline-consumer in /usr/local/bin.
# The chart's operator runs `hookline-operator`; the pods it makes run the
# other two from the same image (their `command`). The kubectl plugin
# `kubectl-hookline` is in the image too, to be copied out
# (`docker cp`) by those who install it from the image.
#
#   docker build -t ghcr.io/hookline/hookline:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Release binaries without debug info (the workspace profile keeps it for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --package hookline-operator --bin hookline-operator \
      --package hookline-receiver --bin hookline-receiver \
      --package hookline-consumer --bin hookline-consumer \
      --package kubectl-hookline --bin kubectl-hookline \
 && mkdir -p /out \
 && cp target/release/hookline-operator target/release/hookline-receiver target/release/hookline-consumer \
       target/release/kubectl-hookline /out/

# glibc, libgcc, CA certificates and a nonroot user; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="hookline" \
      org.opencontainers.image.description="Reliable inbound webhooks on Kubernetes: operator, receiver and consumer" \
      org.opencontainers.image.source="https://github.com/hookline/hookline" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/hookline-operator /out/hookline-receiver /out/hookline-consumer /out/kubectl-hookline /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["hookline-operator"]
