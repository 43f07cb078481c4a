#!/usr/bin/env bash
# The local stack: a private PostgreSQL cluster, Redis and a single-node Apache Kafka
# (KRaft), all under .local/, all on loopback. No Docker.
#
#   deploy/local/stack.sh up [postgres|redis|kafka ...] | down | status | env
#
# `up` is idempotent: a component whose pid file names a live process that answers is
# left alone. Processes are stopped by pid file, never by name, so a second checkout's
# stack (on other ports) is never touched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="${HOOKSTREAM_LOCAL_DIR:-$ROOT/.local}"

PG_PORT="${HOOKSTREAM_PG_PORT:-55432}"
REDIS_PORT="${HOOKSTREAM_REDIS_PORT:-56379}"
KAFKA_PORT="${HOOKSTREAM_KAFKA_PORT:-59092}"
KAFKA_CONTROLLER_PORT="${HOOKSTREAM_KAFKA_CONTROLLER_PORT:-59093}"
PG_USER_OS="${HOOKSTREAM_PG_OS_USER:-hookstream-pg}" # initdb refuses to run as root
PG_DB="hookstream"

PG_DIR="$LOCAL/pg"
REDIS_DIR="$LOCAL/redis"
KAFKA_DIR="$LOCAL/kafka"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# --- helpers -----------------------------------------------------------------------

pid_alive() { # pidfile
    [[ -f "$1" ]] && kill -0 "$(head -n1 "$1")" 2>/dev/null
}

port_in_use() { # port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_free_port() { # name port
    if port_in_use "$2"; then
        die "$1: port $2 on 127.0.0.1 is already taken by another process. Stop it, or choose another port, e.g. HOOKSTREAM_${1^^}_PORT=$(( $2 + 1 )) make stack-up"
    fi
}

wait_until() { # description timeout_s command...
    local what="$1" timeout="$2"; shift 2
    local deadline=$(( SECONDS + timeout ))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2
    done
    log "$what is up"
}

stop_pidfile() { # name pidfile
    local name="$1" pidfile="$2"
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"; return 0
    fi
    local pid; pid="$(head -n1 "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( SECONDS + 30 ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            log "$name did not stop within 30s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    log "$name stopped"
}

# --- PostgreSQL --------------------------------------------------------------------

as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u "$PG_USER_OS" -- "$@"
    else
        "$@"
    fi
}

pg_bin() {
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [[ -x "$d/pg_ctl" ]] && { echo "$d"; return; }
    done
    command -v pg_ctl >/dev/null && { dirname "$(readlink -f "$(command -v pg_ctl)")"; return; }
    die "PostgreSQL server binaries (pg_ctl, initdb) not found; install PostgreSQL 15"
}

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres; }

pg_up() {
    local bin; bin="$(pg_bin)"
    if [[ "$(id -u)" == 0 ]] && ! id -u "$PG_USER_OS" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER_OS"
    fi
    mkdir -p "$PG_DIR"
    [[ "$(id -u)" == 0 ]] && chown "$PG_USER_OS" "$PG_DIR"
    if pid_alive "$PG_DIR/data/postmaster.pid" && pg_ready; then
        log "postgres already running on $PG_PORT"; return
    fi
    require_free_port pg "$PG_PORT"
    if [[ ! -f "$PG_DIR/data/PG_VERSION" ]]; then
        log "initdb into $PG_DIR/data"
        as_pg "$bin/initdb" -D "$PG_DIR/data" -U hookstream --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log"
    fi
    # fsync off: this cluster holds development and test data only; it trades crash
    # safety of the dev box for ~3x faster test set-up. Never use these flags in production.
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start -o \
        "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null \
        || die "postgres failed to start; see $PG_DIR/postgres.log"
    wait_until postgres 60 pg_ready || die "postgres did not answer; see $PG_DIR/postgres.log"
    if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U hookstream -d postgres -tAc "select 1 from pg_database where datname='$PG_DB'" | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U hookstream "$PG_DB"
    fi
}

pg_down() {
    if [[ -f "$PG_DIR/data/postmaster.pid" ]] && pid_alive "$PG_DIR/data/postmaster.pid"; then
        as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null && log "postgres stopped"
    fi
}

# --- Redis -------------------------------------------------------------------------

redis_ready() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

redis_up() {
    if ! command -v redis-server >/dev/null; then
        [[ "$(id -u)" == 0 ]] || die "redis-server is missing; install it (apt-get install redis-server)"
        log "installing redis-server with apt-get"
        (apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }) >/dev/null \
            || die "apt-get install redis-server failed"
    fi
    mkdir -p "$REDIS_DIR"
    if pid_alive "$REDIS_DIR/redis.pid" && redis_ready; then
        log "redis already running on $REDIS_PORT"; return
    fi
    require_free_port redis "$REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
        --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
        --save "" --appendonly no --protected-mode yes >/dev/null
    wait_until redis 30 redis_ready || die "redis did not answer; see $REDIS_DIR/redis.log"
}

redis_down() { stop_pidfile redis "$REDIS_DIR/redis.pid"; }

# --- Kafka (KRaft, from Maven Central jars) ----------------------------------------

kafka_fetch() {
    if [[ -f "$KAFKA_DIR/libs/.complete" ]]; then return; fi
    command -v mvn >/dev/null || die "mvn is missing; install Maven to fetch Kafka from Maven Central"
    command -v java >/dev/null || die "java is missing; Kafka 4 needs Java 17"
    log "fetching Apache Kafka jars from Maven Central (cached in ~/.m2)"
    rm -rf "$KAFKA_DIR/libs"; mkdir -p "$KAFKA_DIR/libs"
    mvn -q -B -f "$ROOT/deploy/local/kafka/pom.xml" dependency:copy-dependencies \
        -Dkafka.libs="$KAFKA_DIR/libs" >&2 || die "mvn could not fetch Kafka"
    touch "$KAFKA_DIR/libs/.complete"
}

# 768 MiB heap: a dev broker with a few thousand small records needs far less, and the
# machine has two cores to share with PostgreSQL, Redis and the services.
KAFKA_JAVA=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$ROOT/deploy/local/kafka/log4j2.properties"
    -cp "$KAFKA_DIR/libs/*")

kafka_config() {
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# generated by deploy/local/stack.sh: a combined broker+controller on loopback
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# single node: a joining consumer should not wait 3 s for company that never comes
group.initial.rebalance.delay.ms=0
EOF
}

kafka_ready() {
    port_in_use "$KAFKA_PORT" && grep -q "Kafka Server started" "$KAFKA_DIR/server.log" 2>/dev/null
}

kafka_up() {
    kafka_fetch
    if pid_alive "$KAFKA_DIR/kafka.pid" && kafka_ready; then
        log "kafka already running on $KAFKA_PORT"; return
    fi
    require_free_port kafka "$KAFKA_PORT"
    require_free_port kafka_controller "$KAFKA_CONTROLLER_PORT"
    kafka_config
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        log "formatting Kafka storage (KRaft, standalone controller)"
        "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone \
            -t "$(cat /proc/sys/kernel/random/uuid | tr -d - | head -c 22)" \
            -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
            || die "kafka storage format failed; see $KAFKA_DIR/format.log"
    fi
    [[ -f "$KAFKA_DIR/server.log" ]] && mv -f "$KAFKA_DIR/server.log" "$KAFKA_DIR/server.log.1"
    nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$KAFKA_DIR/kafka.pid" \
        "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
        >"$KAFKA_DIR/server.log" 2>&1 </dev/null &
    disown || true
    if ! wait_until kafka 120 kafka_ready; then
        tail -n 30 "$KAFKA_DIR/server.log" >&2 || true
        die "kafka did not start within 120s; see $KAFKA_DIR/server.log"
    fi
}

kafka_down() { stop_pidfile kafka "$KAFKA_DIR/kafka.pid"; }

# --- commands ----------------------------------------------------------------------

print_env() {
    cat <<EOF
HOOKSTREAM_DATABASE_URL=postgresql+asyncpg://hookstream@127.0.0.1:$PG_PORT/$PG_DB
HOOKSTREAM_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
HOOKSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
EOF
}

status() {
    local rc=0
    if pg_ready 2>/dev/null; then echo "postgres  up    127.0.0.1:$PG_PORT"; else echo "postgres  down  127.0.0.1:$PG_PORT"; rc=1; fi
    if pid_alive "$REDIS_DIR/redis.pid" && redis_ready 2>/dev/null; then echo "redis     up    127.0.0.1:$REDIS_PORT"; else echo "redis     down  127.0.0.1:$REDIS_PORT"; rc=1; fi
    if pid_alive "$KAFKA_DIR/kafka.pid" && kafka_ready; then echo "kafka     up    127.0.0.1:$KAFKA_PORT"; else echo "kafka     down  127.0.0.1:$KAFKA_PORT"; rc=1; fi
    return $rc
}

case "${1:-}" in
    up)
        mkdir -p "$LOCAL"
        shift
        for component in "${@:-postgres redis kafka}"; do
            for c in $component; do
                case "$c" in
                    postgres) pg_up ;;
                    redis) redis_up ;;
                    kafka) kafka_up ;;
                    *) die "unknown component: $c (postgres, redis, kafka)" ;;
                esac
            done
        done
        print_env
        ;;
    down) kafka_down; redis_down; pg_down ;;
    status) status ;;
    env) print_env ;;
    *) echo "usage: $0 up [postgres|redis|kafka ...]|down|status|env" >&2; exit 2 ;;
esac
