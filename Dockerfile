# syntax=docker/dockerfile:1
# Build: docker build -t recsvc .
# Serve: docker run -p 50051:50051 -v $PWD/var/models:/models recsvc
# Train: docker run -v $PWD/data:/data -v $PWD/var/models:/models recsvc \
#          train --events /data/events.csv --model-dir /models

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/recsvc
ENV PATH=/opt/recsvc/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos protos
COPY recsvc recsvc
COPY service service
COPY training training
COPY loadtest loadtest
COPY cli cli
COPY console console
# A plain install, as from a wheel: setup.py's build hook generates the gRPC code.
RUN pip install .

FROM python:3.11-slim
# implicit's OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home recsvc
COPY --from=build /opt/recsvc /opt/recsvc
ENV PATH=/opt/recsvc/bin:$PATH \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1
USER recsvc
WORKDIR /home/recsvc
VOLUME ["/models"]
# gRPC, and Prometheus /metrics. (The operator console, `serve --console-port 8080`, is off by
# default: it binds beyond loopback only with API keys configured.)
EXPOSE 50051 9100
# Under TLS (serve --tls-cert/--tls-key), set RECSVC_TLS_CA to the CA file and, if the
# certificate does not name 127.0.0.1, RECSVC_TLS_SERVER_NAME to a name it carries.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD recsvc health --target 127.0.0.1:50051 \
      ${RECSVC_TLS_CA:+--tls-ca "$RECSVC_TLS_CA"} \
      ${RECSVC_TLS_SERVER_NAME:+--tls-server-name "$RECSVC_TLS_SERVER_NAME"}
ENTRYPOINT ["recsvc"]
CMD ["serve", "--model-dir", "/models", "--host", "0.0.0.0", "--port", "50051", \
     "--metrics-port", "9100"]
