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
COPY demo demo
COPY bench bench
COPY engine engine
RUN pip install --no-cache-dir .
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
ENV PATH=/opt/venv/bin:$PATH \
    GROUNDWATCH_ENGINE_MODULE=/opt/groundwatch/engine/build/engine.so \
    GROUNDWATCH_DATA_DIR=/data
RUN useradd --system --uid 10001 --home-dir /data --create-home groundwatch
USER 10001
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["groundwatch"]
CMD ["--help"]
