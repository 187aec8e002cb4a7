# mllib dev environment: GPU-capable PyTorch and TensorFlow, the same pinned requirements as the README.
# Build with ./drb, run with ./dr (mounts the checkout at /opt/mllib, where the editable install points).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/mllib
COPY requirements.txt requirements-dev.txt ./
# requirements.txt pins CPU TensorFlow (tensorflow-cpu); the image takes the GPU-capable build of the same
# version. torch==<pin> from PyPI on Linux is already the CUDA build. Everything else is installed as pinned.
RUN sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt > /tmp/requirements-gpu.txt \
    && pip install -r /tmp/requirements-gpu.txt -r requirements-dev.txt

COPY . .
RUN pip install --no-deps -e .

CMD ["bash"]
