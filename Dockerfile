# mllib dev environment: GPU-capable PyTorch and TensorFlow, the same pinned requirements as the README.
# Build with ./drb, run with ./dr (mounts the checkout at /opt/mllib, where the editable install points).
# Works on the official python image and on a Debian-made base with python3 and python3-venv (.ci/container):
# the packages go into a virtual environment, never into the system's Python.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

WORKDIR /opt/mllib
COPY requirements.txt requirements-dev.txt requirements-ray.txt ./
# requirements.txt pins CPU TensorFlow (tensorflow-cpu); the image takes the GPU-capable build of the same
# version. torch==<pin> from PyPI on Linux is already the CUDA build. Everything else is installed as pinned.
RUN python3 -m venv /opt/venv \
    && sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt > /tmp/requirements-gpu.txt \
    && pip install -r /tmp/requirements-gpu.txt -r requirements-dev.txt

COPY . .
RUN pip install --no-deps -e .

CMD ["bash"]
