# A slim image that runs the gateway under gunicorn's gevent worker as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY wsgi.py gunicorn.conf.py ./
COPY gateway ./gateway
COPY blueprints ./blueprints

# The SQLite database lives in the instance folder: mount a volume there to keep accounts.
RUN useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /app/instance \
    && chown gateway /app/instance
USER gateway
VOLUME ["/app/instance"]

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=4)"

# JWT_SECRET_KEY must be given at run time: docker run -e JWT_SECRET_KEY=... -p 8000:8000 IMAGE
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
