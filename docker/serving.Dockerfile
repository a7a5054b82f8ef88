# syntax=docker/dockerfile:1
# The Ray Serve image of LocalModelPools: Ray (from the upstream image, so its version
# matches the RayService's rayVersion) plus Kascade's model app and llama.cpp.
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/kascade/serving:0.1.0 .
# RAY_VERSION must satisfy pyproject's ray[serve] pin and equal the rayVersion the
# operator writes into RayServices.
ARG RAY_VERSION=2.40.0
ARG RAY_IMAGE=rayproject/ray:${RAY_VERSION}-py311-cpu

# llama-cpp-python has no prebuilt CPU wheels on PyPI: compile it here, with portable
# flags (no -march=native: the image runs on whatever CPU the node has).
FROM ${RAY_IMAGE} AS wheels
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /home/ray/src
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users operator ./operator
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    FORCE_CMAKE=1
RUN pip wheel --no-cache-dir --wheel-dir /home/ray/wheels ".[serving]"

FROM ${RAY_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ray is already installed in the base image; pip keeps that version when it satisfies
# the pin instead of replacing it.
RUN --mount=type=bind,from=wheels,source=/home/ray/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "kascade[serving]"
# The upstream image's non-root user (uid 1000), as KubeRay expects.
USER ray
