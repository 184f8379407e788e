# syntax=docker/dockerfile:1
# Context Memory Gateway: one image for every role.
#   docker run IMAGE                  -> cmg serve (set CMG_HOST=0.0.0.0, the default here)
#   docker run IMAGE worker|scheduler|migrate
# Every dependency ships as a wheel (crontab is pure Python), so no compiler is needed in
# either stage; the build stage only exists to keep pip's work out of the final layers.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY gateway/ gateway/
COPY memory/ memory/
COPY workers/ workers/
# A regular (non-editable) install, byte-compiled by pip: the final stage copies only
# /opt/venv, never /src. The local embedder builds its quantised model into the venv here.
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -c 'from memory.embedder import LocalMiniLM; LocalMiniLM()'


FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="context-memory-gateway" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway with context memory" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CMG_HOST=0.0.0.0 \
    CMG_PORT=8080 \
    CMG_DATA_DIR=/var/lib/cmg

RUN groupadd --system --gid 10001 cmg \
    && useradd --system --no-log-init --uid 10001 --gid cmg \
        --home-dir /var/lib/cmg --shell /usr/sbin/nologin cmg \
    && install -d -o cmg -g cmg -m 0750 /var/lib/cmg

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /var/lib/cmg
EXPOSE 8080

# slim has no curl: probe /healthz with the standard library. Only `serve` listens, so
# worker and scheduler containers override or disable this check (see the compose file).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CMG_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["cmg"]
CMD ["serve"]
