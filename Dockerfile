# The ops-workers image: every process of the system (receiver, workers, beat, flower, exporter)
# runs from it with a different `ops-workers` command. Slim base, non-root user.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPS_VAR_DIR=/var/lib/ops-workers

# pg_dump/pg_restore of the platform's major version (15 on bookworm) and zstd for backups.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client zstd \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --gid 0 --home-dir /app --shell /usr/sbin/nologin ops \
    && install -d -o ops -g 0 -m 0770 /var/lib/ops-workers

WORKDIR /app
COPY pyproject.toml constraints.txt README.md beat_schedule.py ./
COPY workers ./workers
RUN pip install --no-compile -c constraints.txt . && rm -rf /root/.cache

USER 10001
# `ops-workers worker` empties its multiprocess metrics directory under OPS_VAR_DIR at start.
ENTRYPOINT ["ops-workers"]
CMD ["check"]
