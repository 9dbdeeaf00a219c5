# One image for every service; the container's command picks one (python -m services.<name>).
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements-dev.txt constraints.txt pyproject.toml Makefile README.md ./
COPY proto proto
COPY services services
COPY sdk sdk
COPY bench bench
RUN make setup && rm -rf /root/.cache
ENV PATH=/app/.venv/bin:$PATH HOME=/tmp HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
USER 10001
