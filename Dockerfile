# One image for the Ray head and the workers: the project, its pinned dependencies, a non-root user.
#   docker build -t sslsearch .                                   # CUDA runtime (GPU nodes)
#   docker build --build-arg BASE=python:3.11-slim -t sslsearch:cpu .   # CPU-only
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# python3 + venv on the CUDA base; the slim Python base already has them (the install is a no-op).
# DL3008 (pin apt versions): the base is a build argument (Ubuntu 24.04 CUDA or Debian slim), whose
# python3 versions differ; the base image's own tag fixes the distribution release instead.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

WORKDIR /opt/sslsearch
COPY pyproject.toml README.md ./
COPY sslsearch ./sslsearch
COPY search_spaces ./search_spaces
COPY experiments ./experiments
RUN pip install "torch==2.14.1" "torchvision==0.29.1" --extra-index-url "${TORCH_INDEX}" \
    && pip install -e ".[cluster]"   # editable: search_spaces/, experiments/ stay beside it
# The cluster recipes travel with the image (ray-cluster.yaml starts cluster/mlflow-compose.yaml).
COPY cluster ./cluster

# uid 1000, like most hosts' first user, so files on a shared NFS volume keep one owner. Ubuntu 24.04
# images ship a user `ubuntu` with that uid: remove it first, or useradd fails.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
    && useradd --create-home --uid 1000 --user-group ssl
USER 1000:1000
WORKDIR /home/ssl

CMD ["python", "-m", "sslsearch.run", "--help"]
