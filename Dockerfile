# A CPU supplier: the `relaymesh` node serving one GGUF model to the mesh, and the
# `relaymesh-bootstrap` binary beside it.
#
#   docker build -t relaymesh .
#   docker run -d --name relaymesh \
#       -v /path/to/models:/models:ro -v relaymesh-data:/data \
#       -p 4002:4002/udp -p 4002:4002/tcp \
#       -e RELAYMESH_BOOTSTRAP=/ip4/…/udp/…/quic-v1/p2p/12D3KooW… \
#       relaymesh
#
# It serves /models/model.gguf as `default` (set RELAYMESH_SERVE, e.g.
# `smollm2=gguf:/models/smollm2.gguf`, for another file or name). The data volume keeps
# the node's identity key (its wallet) and database across restarts. The API and its
# dashboard listen on the container's loopback only; to reach them from the host, give
# the node API keys (RELAYMESH_API=0.0.0.0:7434, RELAYMESH_API_KEYS=/data/api-keys.toml,
# -p 7434:7434) or use `--network host`.
#
# GPUs: build with a GPU feature, e.g. `--build-arg FEATURES=cuda` on a CUDA
# development image (`--build-arg BUILDER=nvidia/cuda:12.6.3-devel-ubuntu24.04`, Rust
# installed in it, and its runtime image as RUNTIME) and run with `--gpus all`; see the
# README's engine section for which feature suits which card.
ARG BUILDER=rust:1-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
ARG FEATURES=""
# llama.cpp is built from source: cmake, a C++ compiler, and libclang for its bindings.
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo install --locked --path . --root /out ${FEATURES:+--features $FEATURES} \
    && cargo install --locked --path bootstrap --root /out

FROM ${RUNTIME}
# llama.cpp's CPU backend uses OpenMP (libgomp); libstdc++ comes with it.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /data --create-home relaymesh \
    && mkdir -p /models && chown relaymesh /data
COPY --from=build /out/bin/relaymesh /out/bin/relaymesh-bootstrap /usr/local/bin/
USER relaymesh
VOLUME ["/data", "/models"]
# The mesh (QUIC and TCP on one port) and the API (loopback unless set otherwise).
EXPOSE 4002/udp 4002/tcp 7434/tcp
ENV RELAYMESH_DATA_DIR=/data \
    RELAYMESH_LISTEN=/ip4/0.0.0.0/udp/4002/quic-v1,/ip4/0.0.0.0/tcp/4002 \
    RELAYMESH_SERVE=default=gguf:/models/model.gguf \
    OMP_WAIT_POLICY=PASSIVE
ENTRYPOINT ["relaymesh"]
CMD ["node"]
