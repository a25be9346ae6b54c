#!/usr/bin/env bash
# Local services for development, tests and `make run`: a Redis-protocol server (Dragonfly stands in
# production; Redis here), a second Redis in cluster mode (to prove the Lua scripts declare every
# key), PostgreSQL 15 and ClickHouse, all on loopback, on project-chosen ports, with their data under
# .services/ (git-ignored). Idempotent: what already answers is reused.
#   scripts/services.sh start|stop|status|env
#   scripts/services.sh start-one|stop-one redis|postgres|clickhouse   (tests run private instances:
#     UE_SERVICES_DIR and the UE_*_PORT variables below choose where)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SVC=${UE_SERVICES_DIR:-$ROOT/.services}
REDIS_PORT=${UE_REDIS_PORT:-6390}
REDIS_CLUSTER_PORT=${UE_REDIS_CLUSTER_PORT:-6391}
PG_PORT=${UE_PG_PORT:-5439}
CH_HTTP_PORT=${UE_CH_HTTP_PORT:-8124}
CH_TCP_PORT=${UE_CH_TCP_PORT:-9004}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$2" && return 0; sleep 0.1; done
  die "$1 did not start on 127.0.0.1:$2 (see $SVC/$1.log)"
}

ensure_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ -n "$PG_BIN" ] || missing+=(postgresql)
  [ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (run as root to install them)"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >"$SVC/apt.log" 2>&1 ||
    { apt-get update -q >>"$SVC/apt.log" 2>&1 && apt-get install -y -q "${missing[@]}" >>"$SVC/apt.log" 2>&1; } ||
    die "apt-get install ${missing[*]} failed (see $SVC/apt.log)"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
}

start_redis() {  # name port extra-args...
  local name=$1 port=$2; shift 2
  port_open "$port" && return 0
  mkdir -p "$SVC/$name"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$SVC/$name" --logfile "$SVC/$name.log" --pidfile "$SVC/$name/redis.pid" "$@" >/dev/null
  wait_port "$name" "$port" 10
}

start_redis_cluster() {
  start_redis redis-cluster "$REDIS_CLUSTER_PORT" --cluster-enabled yes \
    --cluster-config-file "$SVC/redis-cluster/nodes.conf"
  # One node owning every slot: a script touching an undeclared or cross-slot key fails there.
  if ! redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | grep -q 'cluster_state:ok'; then
    redis-cli -p "$REDIS_CLUSTER_PORT" cluster addslotsrange 0 16383 >/dev/null
    local i
    for ((i = 0; i < 50; i++)); do
      redis-cli -p "$REDIS_CLUSTER_PORT" cluster info | grep -q 'cluster_state:ok' && return 0
      sleep 0.1
    done
    die "redis cluster node did not become ready"
  fi
}

pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  port_open "$PG_PORT" && return 0
  local data=$SVC/pg/data sock=$SVC/pg/run
  # A Unix socket path may not exceed 107 bytes (deep checkouts, per-test folders): fall back to a
  # short per-port folder under /tmp; everything here connects over TCP anyway.
  [ ${#sock} -le 80 ] || sock=/tmp/ue-pg-$PG_PORT
  mkdir -p "$SVC/pg" "$sock"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$SVC/pg" "$sock"
  if [ ! -s "$data/PG_VERSION" ]; then
    pg_as "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$SVC/pg-init.log" 2>&1 ||
      die "initdb failed (see $SVC/pg-init.log)"
  fi
  pg_as "$PG_BIN/pg_ctl" -D "$data" -l "$SVC/pg/postgres.log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    >/dev/null || die "PostgreSQL did not start: $(grep -E 'FATAL|PANIC|ERROR' "$SVC/pg/postgres.log" 2>/dev/null | tail -n 1) (see $SVC/pg/postgres.log)"
}

write_clickhouse_config() {
  local d=$SVC/clickhouse
  mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas"
  cat >"$d/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$d/clickhouse.log</log><errorlog>$d/clickhouse.err.log</errorlog>
    <size>50M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$CH_HTTP_PORT</http_port>
  <tcp_port>$CH_TCP_PORT</tcp_port>
  <max_connections>256</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <uncompressed_cache_size>1073741824</uncompressed_cache_size>
  <mark_cache_size>536870912</mark_cache_size>
  <path>$d/data/</path>
  <tmp_path>$d/tmp/</tmp_path>
  <user_files_path>$d/user_files/</user_files_path>
  <format_schema_path>$d/format_schemas/</format_schema_path>
  <users_config>$d/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$d/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><load_balancing>random</load_balancing></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
}

start_clickhouse() {
  port_open "$CH_HTTP_PORT" && return 0
  write_clickhouse_config
  local bin=/usr/sbin/clickhouse-server
  [ -x "$bin" ] || bin=$(command -v clickhouse-server)
  (cd "$SVC/clickhouse" && exec setsid "$bin" --config-file="$SVC/clickhouse/config.xml" \
      >"$SVC/clickhouse.log" 2>&1 </dev/null) &
  echo $! >"$SVC/clickhouse/clickhouse.pid"  # 18.16 writes no pid file when not daemonized
  wait_port clickhouse "$CH_HTTP_PORT" 60
}

stop_pidfile() {  # name pidfile
  [ -s "$2" ] || return 0
  local pid; pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $1"
  fi
  rm -f "$2"
}

print_env() {
  cat <<ENV
DRAGONFLY_HOST=127.0.0.1
DRAGONFLY_PORT=$REDIS_PORT
UE_TEST_CLUSTER_PORT=$REDIS_CLUSTER_PORT
POSTGRES_DSN=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT
ENV
}

mkdir -p "$SVC"
case "${1:-start}" in
  start)
    ensure_packages
    start_redis redis "$REDIS_PORT"
    start_redis_cluster
    start_postgres
    start_clickhouse
    log "ready: redis :$REDIS_PORT, redis-cluster :$REDIS_CLUSTER_PORT, postgres :$PG_PORT, clickhouse :$CH_HTTP_PORT"
    ;;
  stop)
    stop_pidfile clickhouse "$SVC/clickhouse/clickhouse.pid"
    pkill -f -- "--config-file=$SVC/clickhouse/config.xml" 2>/dev/null || true
    [ -s "$SVC/pg/data/postmaster.pid" ] && pg_as "$PG_BIN/pg_ctl" -D "$SVC/pg/data" -m fast -w stop >/dev/null 2>&1 && log "stopped postgres"
    stop_pidfile redis "$SVC/redis/redis.pid"
    stop_pidfile redis-cluster "$SVC/redis-cluster/redis.pid"
    ;;
  status)
    for p in "redis $REDIS_PORT" "redis-cluster $REDIS_CLUSTER_PORT" "postgres $PG_PORT" "clickhouse $CH_HTTP_PORT"; do
      set -- $p; if port_open "$2"; then echo "$1: up (127.0.0.1:$2)"; else echo "$1: down"; fi
    done
    ;;
  env) print_env ;;
  start-one)
    ensure_packages
    case "${2:-}" in
      redis) start_redis redis "$REDIS_PORT" ;;
      postgres) start_postgres ;;
      clickhouse) start_clickhouse ;;
      *) die "usage: $0 start-one redis|postgres|clickhouse" ;;
    esac ;;
  stop-one)
    case "${2:-}" in
      redis) stop_pidfile redis "$SVC/redis/redis.pid" ;;
      postgres) [ -s "$SVC/pg/data/postmaster.pid" ] && pg_as "$PG_BIN/pg_ctl" -D "$SVC/pg/data" -m immediate -w stop >/dev/null 2>&1 || true ;;
      clickhouse) stop_pidfile clickhouse "$SVC/clickhouse/clickhouse.pid" ;;
      *) die "usage: $0 stop-one redis|postgres|clickhouse" ;;
    esac ;;
  *) die "usage: $0 start|stop|status|env|start-one|stop-one" ;;
esac
