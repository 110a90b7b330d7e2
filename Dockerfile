# texflow-websocket: slim Python, non-root, the same server command as `make run`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY config/constraints.txt ./config/constraints.txt
COPY app ./app
# The default DOCUMENT_STORE, sqlite:///data/documents.sqlite3, is relative to the WORKDIR:
# /srv/data must exist and belong to the runtime user (SQLite also writes its -wal and -shm
# files beside the database). Documents stay in the container unless a volume is mounted there
# (docker run -v texflow-documents:/srv/data ...; a new named volume takes this folder's owner).
RUN pip install -c config/constraints.txt . \
    && useradd --system --uid 10001 --no-create-home texflow \
    && install -d -o texflow -g texflow -m 0750 /srv/data

USER 10001
ENV ENVIRONMENT=production \
    HOST=0.0.0.0 \
    WEBSOCKET_SERVICE_PORT=8082
EXPOSE 8082

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('WEBSOCKET_SERVICE_PORT', '8082'), timeout=2)"]

CMD ["python", "-m", "app"]
