# syntax=docker/dockerfile:1
# waitroom and waitroomctl on a minimal, non-root runtime image. The service
# writes nothing to disk, so it runs with a read-only root filesystem.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source changes do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src/bin/waitroomctl src/bin/waitroom-bench \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/waitroomctl/main.rs \
    && echo 'fn main() {}' > src/bin/waitroom-bench/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bins \
    && rm -rf src
COPY src src
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin waitroom --bin waitroomctl

# glibc and libgcc, nothing else; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/waitroom /src/target/release/waitroomctl /usr/local/bin/
ENV WAITROOM_LISTEN=0.0.0.0:50051 \
    WAITROOM_HTTP_LISTEN=0.0.0.0:8080 \
    WAITROOM_LOG_FORMAT=json
EXPOSE 50051 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/waitroom"]
