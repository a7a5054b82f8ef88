# syntax=docker/dockerfile:1
# The Kascade gateway: the data-plane router (plain ASGI on uvloop). No kopf, no
# Kubernetes client, no Ray: only the package's base dependencies.
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t ghcr.io/kascade/gateway:0.1.0 .
# The operator runs it with the compiled config mounted from a ConfigMap:
#   kascade gateway --config /etc/kascade/gateway/config.json --host 0.0.0.0 --port 8080
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels kascade
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["kascade"]
# The gateway listens on 127.0.0.1 unless told otherwise; in a pod it must listen on all
# interfaces for the Service and the kubelet's probes to reach it.
CMD ["gateway", "--config", "/etc/kascade/gateway/config.json", "--host", "0.0.0.0", "--port", "8080"]
