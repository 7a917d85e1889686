# dicomweb-gateway: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) in front of a DIMSE-only PACS.
#   docker build -t dicomweb-gateway .
# Configured by environment variables alone (every setting has one, see the README):
#   docker run -p 8080:8080 -e GATEWAY_UPSTREAM=PACS@10.0.0.5:104 -e GATEWAY_AE_TITLE=GATEWAY \
#     -e GATEWAY_AUTH__ISSUERS='["https://login.example.org/realms/hospital"]' \
#     -e GATEWAY_AUTH__AUDIENCE=https://pacs.example.org/dicom-web dicomweb-gateway
# or by a mounted TOML file (its port is honoured; variables override it):
#   docker run -p 8080:8080 -p 11113:11113 -v "$PWD/gateway.toml:/etc/dicomweb-gateway/gateway.toml:ro" dicomweb-gateway
# It binds 0.0.0.0, so it needs a token issuer ([auth] issuers and audience, GATEWAY_AUTH__* or --auth-issuer
# and --auth-audience); without one it exits at start-up unless anonymous service is asked for:
# [auth] allow_anonymous = true, GATEWAY_AUTH__ALLOW_ANONYMOUS=true or --allow-anonymous (anyone reaching the
# port can then read and store every study; see README: Security).
# The self-contained demo (a PACS with synthetic sample studies inside the container) serves anonymously:
#   docker run -p 8080:8080 dicomweb-gateway demo
# The instance cache lives in /tmp unless cache_dir (GATEWAY_CACHE_DIR) names another place (mount a volume there).

# Stage 1: install the project and its dependencies (with the demo's) into a virtualenv.
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY openapi/ openapi/
COPY gateway/ gateway/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check ".[demo]"

# Stage 2: the same base image with only that virtualenv, run as an unprivileged user.
FROM python:3.11-slim
# A container listens on all its interfaces (GATEWAY_HOST wins over a mounted file's host; set it empty to
# use the file's). GATEWAY_CONFIG is read when present: the image holds an empty one, to mount over.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_CONFIG=/etc/dicomweb-gateway/gateway.toml
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/dicomweb-gateway \
    && echo "# Mount the gateway's configuration here, or set GATEWAY_* variables (see the README)." \
        > /etc/dicomweb-gateway/gateway.toml
USER gateway
# 8080: HTTP (DICOMweb under /dicom-web, /, /health, /ready, /metrics). 11113: the storage SCP (store_port) for C-MOVE.
EXPOSE 8080 11113
# `health` reads the same settings as `serve`, so it asks the port the configuration chose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["dicomweb-gateway", "health"]
ENTRYPOINT ["dicomweb-gateway"]
CMD ["serve"]
