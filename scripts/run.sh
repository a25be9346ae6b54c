#!/usr/bin/env bash
# `make run`: use the services named in .env if it exists, else bring up local ones; migrate; run.
#   scripts/run.sh [migrate]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .env ]; then
  set -a; . ./.env; set +a
fi
if [ -z "${POSTGRES_DSN:-}" ] || [ -z "${DRAGONFLY_PORT:-}" ] || [ -z "${CLICKHOUSE_URL:-}" ]; then
  bash scripts/services.sh start
  while IFS='=' read -r k v; do
    [ -n "${!k:-}" ] || export "$k=$v"
  done < <(bash scripts/services.sh env)
fi
.venv/bin/uptime-engine migrate
[ "${1:-}" = migrate ] && exit 0
exec .venv/bin/uptime-engine run
