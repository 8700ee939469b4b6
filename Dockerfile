# hagw: slim Python base, non-root user, health-checked on the admin listener's /healthz.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY monitor ./monitor
RUN pip install '.[speed,otlp]' \
    && useradd --system --uid 10001 --home-dir /var/lib/hagw --create-home hagw \
    && mkdir -p /etc/hagw && chown hagw /var/lib/hagw
COPY configs/gateway.yaml /etc/hagw/gateway.yaml

USER hagw
EXPOSE 8080 9901
# The admin listener must be reachable from inside the container (admin.listen).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2); sys.exit(0)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["hagw"]
CMD ["run", "-c", "/etc/hagw/gateway.yaml"]
