# The cloudpods image the Helm chart runs (image.repository / image.tag): one static-ish
# binary on a distroless base, non-root (uid 65532, as the chart's securityContext expects).
#   docker build -t ghcr.io/migrahosting/cloudpods:$(cargo pkgid -p cloudpods | cut -d@ -f2) .
# Not built by CI here (no container engine on the build machines); scripts/test builds and
# tests the same crate (dev profile), and the benches build it with --release on request.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cloudpods \
    && install -D -m 0755 target/release/cloudpods /out/cloudpods

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cloudpods /usr/local/bin/cloudpods
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cloudpods"]
