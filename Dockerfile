# persona-exporter: the exporter process (persona-exporter serve) as a container image.
#   docker build -t persona-exporter .
#   docker run -p 127.0.0.1:9464:9464 persona-exporter
# Multi-stage: wheels are built with the build tools in the first stage; the runtime stage
# gets only the installed package and runs as an unprivileged user.

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --home-dir /nonexistent --shell /usr/sbin/nologin exporter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels persona-exporter \
 && rm -rf /wheels
# The durable state (serve --storage.path): owned by the runtime user, so a named volume
# mounted here starts with the right owner. Mount a volume, or the state lives and dies
# with the container.
RUN mkdir -p /var/lib/persona-exporter && chown 10001:10001 /var/lib/persona-exporter
USER 10001:10001
# Inside a container the exporter must listen on all interfaces; publish the port on
# 127.0.0.1 on the host (the compose stack does).
ENV PERSONA_EXPORTER_WEB_LISTEN_ADDRESS=0.0.0.0:9464 \
    PERSONA_EXPORTER_STORAGE_PATH=/var/lib/persona-exporter \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/persona-exporter
EXPOSE 9464
# The slim image has no curl: probe /healthz with Python itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["persona-exporter"]
CMD ["serve"]
