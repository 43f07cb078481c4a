#!/usr/bin/env bash
# The local stack: a private PostgreSQL cluster, Redis and Apache Kafka (KRaft), all
# under .local/, all on loopback. No Docker.
#
#   deploy/local/stack.sh up [postgres|redis|kafka ...] | down | status | env | bootstrap
#
# Kafka is one node by default (.local/kafka, port 59092). HOOKSTREAM_KAFKA_BROKERS=3
# runs a cluster instead: nodes 1..N under .local/kafka-cluster/node-<i>/, each a combined
# broker+controller with its own data dir, log and pid file, broker ports from
# HOOKSTREAM_KAFKA_CLUSTER_PORT (59192, 59193, ...) and controller ports from
# HOOKSTREAM_KAFKA_CLUSTER_CONTROLLER_PORT (59292, ...); the controllers are one quorum
# of N voters. The single node and a cluster may run side by side; `down` stops them all.
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
KAFKA_BROKERS="${HOOKSTREAM_KAFKA_BROKERS:-1}"
KAFKA_CLUSTER_PORT="${HOOKSTREAM_KAFKA_CLUSTER_PORT:-59192}"
KAFKA_CLUSTER_CONTROLLER_PORT="${HOOKSTREAM_KAFKA_CLUSTER_CONTROLLER_PORT:-59292}"
PG_USER_OS="${HOOKSTREAM_PG_OS_USER:-hookstream-pg}" # initdb refuses to run as root
PG_DB="hookstream"

PG_DIR="$LOCAL/pg"
REDIS_DIR="$LOCAL/redis"
KAFKA_DIR="$LOCAL/kafka"
CLUSTER_DIR="$LOCAL/kafka-cluster"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

[[ "$KAFKA_BROKERS" =~ ^[1-9]$ ]] || die "HOOKSTREAM_KAFKA_BROKERS must be a number from 1 to 9"

# --- helpers -----------------------------------------------------------------------

pid_alive() { # pidfile
    [[ -f "$1" ]] || return 1
    local pid; pid="$(head -n1 "$1")"
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie answers kill -0 until something reaps it; it is not running.
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
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
    # Every autovacuum and autoanalyze is logged with its timing: on two cores one can
    # take a core while it runs, and the latency bench matches them with its worst webhooks.
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start -o \
        "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c log_autovacuum_min_duration=0" >/dev/null \
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

# 768 MiB heap: a dev broker with a few thousand small records needs far less, and the
# machine has two cores to share with PostgreSQL, Redis and the services. Cluster nodes get
# 512 MiB each: three of them share the same cores and memory.
# The G1 options are the ones Kafka's own start script uses (KAFKA_JVM_PERFORMANCE_OPTS):
# a 20 ms pause goal instead of G1's default 200 ms keeps young collections short, and
# every produce and fetch waits out a broker pause.
# The heap is fixed at its maximum, as Kafka's script fixes it (KAFKA_HEAP_OPTS). Grown from
# 256 MiB it stayed at ~390 MiB, and a long-lived dev broker keeps ~200 MiB live (the
# partitions of every test and bench run), above 35 % of that: each large request buffer
# (a humongous allocation) began a concurrent mark that freed nothing. Measured from
# gc.log: 110 such cycles in 8 minutes of bench runs, 24.6 s of marking on the two cores
# the services under test share.
kafka_java() { # heap
    KAFKA_JAVA=(java "-Xms$1" "-Xmx$1" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$ROOT/deploy/local/kafka/log4j2.properties"
        -cp "$KAFKA_DIR/libs/*")
}

# The cluster's node i (1-based): its directory and ports.
node_dir() { echo "$CLUSTER_DIR/node-$1"; }
node_port() { echo $(( KAFKA_CLUSTER_PORT + $1 - 1 )); }
node_controller_port() { echo $(( KAFKA_CLUSTER_CONTROLLER_PORT + $1 - 1 )); }

kafka_bootstrap() {
    if (( KAFKA_BROKERS == 1 )); then echo "127.0.0.1:$KAFKA_PORT"; return; fi
    local i list=()
    for (( i = 1; i <= KAFKA_BROKERS; i++ )); do list+=("127.0.0.1:$(node_port "$i")"); done
    (IFS=,; echo "${list[*]}")
}

kafka_config() { # dir node_id port controller_port
    local dir="$1" id="$2" port="$3" cport="$4"
    mkdir -p "$dir/data"
    {
        cat <<EOF
# generated by deploy/local/stack.sh: a combined broker+controller on loopback
process.roles=broker,controller
node.id=$id
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
# a joining consumer should not wait 3 s for company that may never come
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=8
EOF
        if [[ "$dir" == "$KAFKA_DIR" ]]; then
            cat <<EOF
controller.quorum.bootstrap.servers=127.0.0.1:$cport
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
        else
            local i voters=() rf=$(( KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3 ))
            local isr=$(( rf < 2 ? rf : 2 ))
            for (( i = 1; i <= KAFKA_BROKERS; i++ )); do
                voters+=("$i@127.0.0.1:$(node_controller_port "$i")")
            done
            cat <<EOF
# a static quorum: every node is a voter
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# A dead node is fenced (its partitions get new leaders, it leaves every ISR) once it has
# not heartbeaten for broker.session.timeout.ms: Kafka's 9 s would be 9 s of 503s at
# ingest for the partitions it led. 4 s with a beat every 0.5 s is still 8 missed beats.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
# A follower that stopped fetching leaves the ISR after this long (Kafka's default 30 s);
# until then acks=all waits for it and ingest answers 503 after its publish timeout.
replica.lag.time.max.ms=6000
EOF
        fi
    } >"$dir/server.properties"
}

kafka_ready() { # dir port
    port_in_use "$2" && grep -q "Kafka Server started" "$1/server.log" 2>/dev/null
}

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

kafka_launch() { # dir, with server.properties written and storage formatted
    local dir="$1"
    rm -f "$dir/kafka.pid"
    [[ -f "$dir/server.log" ]] && mv -f "$dir/server.log" "$dir/server.log.1"
    nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
        "${KAFKA_JAVA[@]}" "-Xlog:gc:file=$dir/gc.log:utctime:filecount=2,filesize=10m" \
        kafka.Kafka "$dir/server.properties" \
        >"$dir/server.log" 2>&1 </dev/null &
    disown || true
}

kafka_wait() { # name dir port: until it answers; stops early if its process died
    local name="$1" dir="$2" port="$3" deadline=$(( SECONDS + 120 ))
    until kafka_ready "$dir" "$port"; do
        if [[ -f "$dir/kafka.pid" ]] && ! pid_alive "$dir/kafka.pid"; then
            tail -n 30 "$dir/server.log" >&2 || true
            die "$name exited; see $dir/server.log"
        fi
        if (( SECONDS >= deadline )); then
            tail -n 30 "$dir/server.log" >&2 || true
            die "$name did not start within 120s; see $dir/server.log"
        fi
        sleep 0.2
    done
    log "$name is up"
}

kafka_single_up() {
    kafka_java 768m
    if pid_alive "$KAFKA_DIR/kafka.pid" && kafka_ready "$KAFKA_DIR" "$KAFKA_PORT"; then
        log "kafka already running on $KAFKA_PORT"; return
    fi
    require_free_port kafka "$KAFKA_PORT"
    require_free_port kafka_controller "$KAFKA_CONTROLLER_PORT"
    kafka_config "$KAFKA_DIR" 1 "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        log "formatting Kafka storage (KRaft, standalone controller)"
        "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone \
            -t "$(tr -d - </proc/sys/kernel/random/uuid | head -c 22)" \
            -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
            || die "kafka storage format failed; see $KAFKA_DIR/format.log"
    fi
    kafka_launch "$KAFKA_DIR"
    kafka_wait kafka "$KAFKA_DIR" "$KAFKA_PORT"
}

# Every stopped node is launched before any is waited for: a node only reports started
# once a majority of the quorum answers, so nodes started one by one would wait forever.
# A node whose process is alive (even stopped by SIGSTOP) is left alone.
kafka_cluster_up() {
    kafka_java 512m
    mkdir -p "$CLUSTER_DIR"
    [[ -s "$CLUSTER_DIR/cluster.id" ]] \
        || tr -d - </proc/sys/kernel/random/uuid | head -c 22 >"$CLUSTER_DIR/cluster.id"
    local i dir port cport
    for (( i = 1; i <= KAFKA_BROKERS; i++ )); do
        dir="$(node_dir "$i")" port="$(node_port "$i")" cport="$(node_controller_port "$i")"
        pid_alive "$dir/kafka.pid" && continue
        require_free_port "kafka_cluster" "$port"
        require_free_port "kafka_cluster_controller" "$cport"
        kafka_config "$dir" "$i" "$port" "$cport"
        if [[ ! -f "$dir/data/meta.properties" ]]; then
            log "formatting Kafka storage of node $i (KRaft, a quorum of $KAFKA_BROKERS voters)"
            "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$(cat "$CLUSTER_DIR/cluster.id")" \
                -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
                || die "kafka storage format of node $i failed; see $dir/format.log"
        fi
        kafka_launch "$dir"
    done
    for (( i = 1; i <= KAFKA_BROKERS; i++ )); do
        kafka_wait "kafka node $i on $(node_port "$i")" "$(node_dir "$i")" "$(node_port "$i")"
    done
}

kafka_up() {
    kafka_fetch
    if (( KAFKA_BROKERS == 1 )); then kafka_single_up; else kafka_cluster_up; fi
}

# Every node, the single one and any cluster node, whatever HOOKSTREAM_KAFKA_BROKERS says
# now. SIGTERM reaches all cluster nodes at once: a node's controlled shutdown needs the
# quorum, which stopping them one by one would take away from the last ones.
kafka_down() {
    stop_pidfile kafka "$KAFKA_DIR/kafka.pid"
    local pidfile pid deadline
    local -a pids=()
    for pidfile in "$CLUSTER_DIR"/node-*/kafka.pid; do
        pid_alive "$pidfile" || continue
        pid="$(head -n1 "$pidfile")"
        kill -CONT "$pid" 2>/dev/null || true # a node left stopped by a test
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    done
    deadline=$(( SECONDS + 30 ))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if (( SECONDS >= deadline )); then
                log "kafka node (pid $pid) did not stop within 30s; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
    rm -f "$CLUSTER_DIR"/node-*/kafka.pid
    (( ${#pids[@]} == 0 )) || log "kafka cluster stopped (${#pids[@]} nodes)"
}

# --- commands ----------------------------------------------------------------------

print_env() {
    cat <<EOF
HOOKSTREAM_DATABASE_URL=postgresql+asyncpg://hookstream@127.0.0.1:$PG_PORT/$PG_DB
HOOKSTREAM_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
HOOKSTREAM_KAFKA_BOOTSTRAP=$(kafka_bootstrap)
EOF
}

status() {
    local rc=0
    if pg_ready 2>/dev/null; then echo "postgres  up    127.0.0.1:$PG_PORT"; else echo "postgres  down  127.0.0.1:$PG_PORT"; rc=1; fi
    if pid_alive "$REDIS_DIR/redis.pid" && redis_ready 2>/dev/null; then echo "redis     up    127.0.0.1:$REDIS_PORT"; else echo "redis     down  127.0.0.1:$REDIS_PORT"; rc=1; fi
    if (( KAFKA_BROKERS == 1 )); then
        if pid_alive "$KAFKA_DIR/kafka.pid" && kafka_ready "$KAFKA_DIR" "$KAFKA_PORT"; then echo "kafka     up    127.0.0.1:$KAFKA_PORT"; else echo "kafka     down  127.0.0.1:$KAFKA_PORT"; rc=1; fi
        return $rc
    fi
    local i dir port
    for (( i = 1; i <= KAFKA_BROKERS; i++ )); do
        dir="$(node_dir "$i")" port="$(node_port "$i")"
        if pid_alive "$dir/kafka.pid" && kafka_ready "$dir" "$port"; then echo "kafka-$i   up    127.0.0.1:$port"; else echo "kafka-$i   down  127.0.0.1:$port"; rc=1; fi
    done
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
    bootstrap) kafka_bootstrap ;;
    *) echo "usage: $0 up [postgres|redis|kafka ...]|down|status|env|bootstrap" >&2; exit 2 ;;
esac
