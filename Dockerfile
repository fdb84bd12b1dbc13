# One image for every groundwatch role: redis-server with the engine, and the groundwatch CLI.
# The command picks the role (docker-compose.yml): `redis-server --loadmodule ...`, or
# `groundwatch load|consume|watch|ingest|status ...`. Settings come only from the environment
# (REDIS_URL, GROUNDWATCH_*).

# --- build: the engine against the libtorch of the torch wheel ----------------------------------
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /opt/groundwatch
COPY pyproject.toml README.md ./
COPY groundwatch groundwatch
COPY ingest ingest
COPY loaders loaders
COPY consumers consumers
COPY models models
COPY monitor monitor
COPY web web
COPY demo demo
COPY bench bench
COPY engine engine
# The onnx extra serves `groundwatch load model.onnx`. onnx2torch goes in with --no-deps, as the
# Makefile does: it requires torchvision, and pip would pull a CUDA torchvision (and a torch to
# match) that does not load beside the CPU torch. The check fails the build if torch was replaced
# or the converter does not import the way a load imports it. (DL3013 takes the local project's
# '.[onnx]' for an unpinned package; its versions are pyproject.toml's.)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[onnx]' \
    && pip install --no-cache-dir --no-deps onnx2torch==1.5.15 \
    && python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__" \
    && python -c "from loaders.onnx_import import available; print(available())"
RUN cmake -S engine -B engine/build -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
    && cmake --build engine/build -j "$(nproc)"

# --- runtime: Debian's redis-server, the engine, the CLI ---------------------------------------
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/groundwatch/engine/build/engine.so /opt/groundwatch/engine/build/engine.so
COPY --from=build /opt/groundwatch/engine/build/backends /opt/groundwatch/engine/build/backends
COPY models/artifacts/detector.pt /opt/groundwatch/models/detector.pt
# OMP_WAIT_POLICY: the engine's intra-op threads sleep between parallel regions instead of
# spinning on cores the redis-server shares with its clients (groundwatch/server.py: ENGINE_ENV)
ENV PATH=/opt/venv/bin:$PATH \
    GROUNDWATCH_ENGINE_MODULE=/opt/groundwatch/engine/build/engine.so \
    GROUNDWATCH_DATA_DIR=/data \
    OMP_WAIT_POLICY=PASSIVE
RUN useradd --system --uid 10001 --home-dir /data --create-home groundwatch
USER 10001
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["groundwatch"]
CMD ["--help"]
