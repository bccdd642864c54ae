# Chrysalis: one image for the sync hub (the default command) and for agents.
# See docs/deployment.md. Nothing is downloaded at run time: the default
# embedder is the offline hashing one; Ollama is an optional compose profile.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data; nothing runs as root.
RUN groupadd --system --gid 10001 chrysalis \
 && useradd --system --create-home --uid 10001 --gid chrysalis chrysalis \
 && mkdir -p /data/hub \
 && chown -R chrysalis:chrysalis /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chrysalis_memory ./chrysalis_memory
RUN pip install . && chrysalis --version
COPY examples ./examples

USER chrysalis
# Agents keep their stores under /data/<agent id>, the hub under /data/hub.
# Embedders (agents' and hub's) stay offline unless a deployment asks for Ollama.
ENV CHRYSALIS_DATA_DIR=/data \
    CHRYSALIS_EMBEDDER=hashing \
    CHRYSALIS_HUB_EMBEDDER=hashing \
    CHRYSALIS_HUB_TOKENS_FILE=/data/hub/tokens.json
VOLUME ["/data"]

# 4444: agents' websocket connections; 8082: HTTP /health and /metrics.
EXPOSE 4444 8082

# The slim image has no curl: ask /health with Python's standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8082/health', timeout=4).status != 200)"]

CMD ["chrysalis", "hub", "--host", "0.0.0.0", "--port", "4444", "--http-port", "8082", \
     "--data-dir", "/data/hub", "--tokens-file", "/data/hub/tokens.json"]
