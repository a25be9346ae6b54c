#!/usr/bin/env bash
# `make run`: the engine with a live view.
#   scripts/run.sh           services (unless named) -> migrate -> demo (local only) -> live view
#   scripts/run.sh migrate   services (unless named) -> migrate
# Settings: variables already in the environment win; .env (or $UE_ENV_FILE) fills in the rest.
# If .env/environment name no Dragonfly, PostgreSQL or ClickHouse, the local ones are started
# (scripts/services.sh) and used. Demo monitors (config/demo-monitors.*, against a target served
# on 127.0.0.1:$UE_DEMO_PORT) are added only when the local services are used, or with UE_DEMO=1;
# UE_DEMO=0 never adds them. The engine's log goes to $UE_LIVE_LOG (.services/engine.log).
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_FILE=${UE_ENV_FILE:-.env}
if [ -f "$ENV_FILE" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
    [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]] && value=${BASH_REMATCH[1]}
    [ -n "${!key+x}" ] || export "$key=$value"
  done < "$ENV_FILE"
fi

local_services=0
if [ -z "${POSTGRES_DSN:-}" ] || [ -z "${DRAGONFLY_PORT:-}" ] || [ -z "${CLICKHOUSE_URL:-}" ]; then
  bash scripts/services.sh start
  local_services=1
  while IFS='=' read -r k v; do
    [ -n "${!k:-}" ] || export "$k=$v"
  done < <(bash scripts/services.sh env)
fi

PY=${UE_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "run.sh: $PY not found: run \`make venv\` (or \`make run\`) first" >&2; exit 2; }

"$PY" -m engine migrate
[ "${1:-}" = migrate ] && exit 0

demo=${UE_DEMO:-$local_services}
args=(--log "${UE_LIVE_LOG:-.services/engine.log}")
[ "$demo" = 1 ] && args+=(--demo --demo-port "${UE_DEMO_PORT:-18080}")
[ -n "${UE_LIVE_REFRESH:-}" ] && args+=(--refresh "$UE_LIVE_REFRESH")
exec "$PY" -m engine.live "${args[@]}" -- "$@"
