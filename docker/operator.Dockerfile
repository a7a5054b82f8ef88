# syntax=docker/dockerfile:1
# The Kascade operator: `kascade operator`, a kopf operator (kopf + kubernetes-asyncio).
# Build from the repository root (the root .dockerignore keeps the context small):
#   docker build -f docker/operator.Dockerfile -t ghcr.io/kascade/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# Wheels are built in a throwaway stage, so the source tree never reaches the image.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "kascade[operator]"
# The numeric non-root user the chart's pod security context expects (runAsUser 65532).
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["kascade"]
CMD ["operator", "--all-namespaces"]
