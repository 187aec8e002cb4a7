# mllib images from one Dockerfile, one stage per job (./drb TARGET; BuildKit or buildah pick the stage):
#   torch   (default, the last stage) the dev image for PyTorch: the core, PyTorch (CUDA), TensorBoard, ONNX export,
#           the test and lint tools; the checkout installed editable at /opt/mllib (./dr mounts it there)
#   tf      the dev image for segment/ (Keras): the core and the GPU-capable TensorFlow, no PyTorch
#   all     both stacks (two CUDA stacks: PyTorch's and TensorFlow's; mllib.tflib loads Triton first)
#   runtime a slim image of the core and PyTorch with the wheel built from the checkout (not editable), no dev tools
# Works on the official python image and on a Debian-made base with python3 and python3-venv (.ci/container):
# the packages go into a virtual environment, never into the system's Python. pip's downloads are kept in a cache
# mount (BuildKit and buildah both have them): a rebuild after a change of one pin downloads that package only, and
# no wheel cache ends up in a layer.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

FROM base AS core
WORKDIR /opt/mllib
COPY requirements*.txt ./
RUN --mount=type=cache,target=/root/.cache/pip python3 -m venv /opt/venv \
    && pip install -r requirements-core.txt -r requirements-test.txt

FROM core AS tf
# requirements-tf.txt pins CPU TensorFlow (tensorflow-cpu); the image takes the GPU-capable build of that version
RUN --mount=type=cache,target=/root/.cache/pip sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements-tf.txt > /tmp/requirements-tf-gpu.txt \
    && pip install -r /tmp/requirements-tf-gpu.txt -r requirements-dev.txt
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps -e .
CMD ["bash"]

FROM core AS all
RUN --mount=type=cache,target=/root/.cache/pip sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements-tf.txt > /tmp/requirements-tf-gpu.txt \
    && pip install -r requirements-torch.txt -r requirements-export.txt -r /tmp/requirements-tf-gpu.txt \
       -r requirements-dev.txt
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps -e .
CMD ["bash"]

FROM core AS wheel
COPY . /tmp/src
RUN --mount=type=cache,target=/root/.cache/pip pip wheel --no-deps -w /tmp/wheels /tmp/src

FROM base AS runtime
COPY requirements-core.txt requirements-torch.txt /tmp/req/
COPY --from=wheel /tmp/wheels /tmp/wheels
RUN --mount=type=cache,target=/root/.cache/pip python3 -m venv /opt/venv \
    && pip install -r /tmp/req/requirements-torch.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/req /tmp/wheels
WORKDIR /work
CMD ["mllib-getcoco", "--help"]

FROM core AS torch
# torch==<pin> from PyPI on Linux is the CUDA build
RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements-torch.txt -r requirements-export.txt -r requirements-dev.txt
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps -e .
CMD ["bash"]
