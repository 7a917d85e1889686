# dicomweb-gateway: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) in front of a DIMSE-only PACS.
#   docker build -t dicomweb-gateway .
#   docker run -p 8080:8080 -p 11113:11113 -v "$PWD/gateway.toml:/etc/dicomweb-gateway/gateway.toml:ro" dicomweb-gateway
# or, without a configuration file:
#   docker run -p 8080:8080 dicomweb-gateway serve --host 0.0.0.0 --port 8080 --upstream PACS@10.0.0.5:104 \
#     --auth-issuer https://login.example.org/realms/hospital --auth-audience https://pacs.example.org/dicom-web
# It binds 0.0.0.0, so it needs a token issuer (gateway.toml: [auth] issuers and audience, or the flags above);
# without one it exits at start-up unless anonymous service is asked for: [auth] allow_anonymous = true or
# --allow-anonymous (anyone reaching the port can then read and store every study; see README: Security).
# The instance cache lives in /tmp unless the configuration gives cache_dir (mount a volume there).

# Stage 1: install the project and its dependencies into a virtualenv.
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check .

# Stage 2: the same base image with only that virtualenv, run as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/dicomweb-gateway
USER gateway
# 8080: HTTP (DICOMweb under /dicom-web, /health, /ready). 11113: the storage SCP (store_port) for C-MOVE.
EXPOSE 8080 11113
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["dicomweb-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--config", "/etc/dicomweb-gateway/gateway.toml"]
