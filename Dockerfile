# One image for the three Python processes; docker-compose.yml picks the process with `command`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Runtime dependencies only (the "# Tests" part of requirements.txt stays out), in their own layer so that
# a code change does not reinstall them. Every wheel is prebuilt (psycopg2-binary, uvloop): no compiler.
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && sed '/^# Tests/,$d' /tmp/requirements.txt > /tmp/runtime.txt \
 && pip install --no-cache-dir -r /tmp/runtime.txt \
 && rm /tmp/requirements.txt /tmp/runtime.txt

RUN useradd --system --uid 10001 --no-create-home --home-dir /app shop
WORKDIR /app
COPY --chown=root:root schema.sql gateway.py openapi.yaml ./
COPY --chown=root:root common ./common
COPY --chown=root:root proxy ./proxy
COPY --chown=root:root order_svc ./order_svc
COPY --chown=root:root payment_svc ./payment_svc
# The provisioning command (python -m ops.provision), which compose's one-shot containers run.
COPY --chown=root:root ops ./ops
USER shop

EXPOSE 8080 8081 8082
CMD ["python", "gateway.py"]
