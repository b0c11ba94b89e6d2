#!/usr/bin/env bash
# Start / stop one private RabbitMQ node (with its own epmd) for a whole
# `make test` run. Everything listens on 127.0.0.1 only; all state (config,
# mnesia, logs, erlang cookie, pid files) lives under DIR.
#
#   hack/rabbitmq.sh start  DIR   start epmd + node if not running; wait for AMQP
#   hack/rabbitmq.sh stop   DIR   stop node and epmd by pid (TERM, KILL after 30 s)
#   hack/rabbitmq.sh url    DIR   print the AMQP URL (exit 1 if the node is down)
#   hack/rabbitmq.sh status DIR   exit 0 if the node answers AMQP
#
# Ports (environment overrides): LXC_AGENT_RABBIT_PORT (AMQP, 5679),
# LXC_AGENT_RABBIT_DIST_PORT (25679), LXC_AGENT_RABBIT_EPMD_PORT (4479).
# User/password: lxcagent/lxcagent. Needs Debian's rabbitmq-server package.
# Processes are only ever signalled by the pids recorded in DIR.
set -euo pipefail

usage() { echo "usage: $0 start|stop|url|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD="$1"
if [ "$CMD" = start ]; then
    mkdir -p "$2"
elif [ ! -d "$2" ]; then
    case "$CMD" in
    stop) exit 0 ;;
    url) echo "rabbitmq.sh: $2 does not exist (hack/rabbitmq.sh start $2)" >&2; exit 1 ;;
    status) echo "not running"; exit 1 ;;
    *) usage ;;
    esac
fi
DIR="$(cd "$2" && pwd)"

PORT="${LXC_AGENT_RABBIT_PORT:-5679}"
DIST_PORT="${LXC_AGENT_RABBIT_DIST_PORT:-25679}"
EPMD_PORT="${LXC_AGENT_RABBIT_EPMD_PORT:-4479}"
USER_PASS=lxcagent
NODE="lxcagent-make-${PORT}@localhost"
RABBIT_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
EPMD=/usr/bin/epmd
START_TIMEOUT="${LXC_AGENT_RABBIT_START_TIMEOUT:-120}"
STOP_TIMEOUT=30

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 LC_ALL=C.UTF-8

log() { printf '[rabbitmq.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

url_of() { echo "amqp://$USER_PASS:$USER_PASS@127.0.0.1:$1/"; }

# pid_alive NAME: the pid in DIR/NAME.pid runs and is the program we started
# (its /proc/PID/cmdline holds the expected binary), so a recycled pid is
# never mistaken for ours.
pid_alive() {
    local pf="$DIR/$1.pid" pid
    [ -s "$pf" ] || return 1
    pid="$(cat "$pf")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$2"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# amqp_ready PORT: the broker answers the AMQP 0-9-1 protocol header with a
# connection.start method frame (first byte 1). The TCP listener only opens
# once the node has booted (users, vhosts and queues are ready by then).
amqp_ready() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        b=$(head -c 1 <&3 | od -An -tu1 | tr -d " ")
        [ "$b" = 1 ]' _ "$1" 2>/dev/null
}

rabbit_env() {
    cat <<EOF
HOME=$DIR/home
ERL_EPMD_ADDRESS=127.0.0.1
ERL_EPMD_PORT=$EPMD_PORT
RABBITMQ_NODENAME=$NODE
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$PORT
RABBITMQ_DIST_PORT=$DIST_PORT
RABBITMQ_CONFIG_FILE=$DIR/etc/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/etc/advanced.config
RABBITMQ_CONF_ENV_FILE=$DIR/etc/rabbitmq-env.conf
RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/etc/enabled_plugins
RABBITMQ_MNESIA_BASE=$DIR/mnesia
RABBITMQ_LOG_BASE=$DIR/log
RABBITMQ_PID_FILE=$DIR/rabbitmq-beam.pid
EOF
}

write_config() {
    mkdir -p "$DIR/etc" "$DIR/home" "$DIR/mnesia" "$DIR/log"
    cat >"$DIR/etc/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$PORT
distribution.listener.interface = 127.0.0.1
distribution.listener.port_range.min = $DIST_PORT
distribution.listener.port_range.max = $DIST_PORT
default_user = $USER_PASS
default_pass = $USER_PASS
default_vhost = /
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.file.level = info
log.console = false
EOF
    echo '[].' >"$DIR/etc/enabled_plugins"
}

# start_bg NAME CMD...: own session (and process group), output to DIR/NAME.out
start_bg() {
    local name="$1"; shift
    setsid "$@" >>"$DIR/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

# stop_pid NAME MATCH: TERM the recorded pid, wait, then KILL its process
# group (setsid made the pid the group id); then KILL whatever is left of
# that group.
stop_pid() {
    local name="$1" match="$2" pid i
    if pid_alive "$name" "$match"; then
        pid="$(cat "$DIR/$name.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        # leftovers of the group (the kernel keeps the pgid while it has members)
        if kill -0 -- "-$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$DIR/$name.pid"
}

# starttime PID: field 22 of /proc/PID/stat (to tell a recycled pid apart)
starttime() {
    local s f
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    read -ra f <<<"${s##*) }" # fields after "(comm) ", from state on
    echo "${f[19]}"
}

# node_pids: "pid:starttime" of beam.smp and its descendants
# (erl_child_setup and inet_gethost call setsid: not in the process group).
node_pids() {
    local bp
    bp="$(cat "$DIR/rabbitmq-beam.pid" 2>/dev/null || true)"
    [[ "$bp" =~ ^[0-9]+$ ]] || return 0
    descendants "$bp"
}
descendants() {
    local p="$1" c st kids
    st="$(starttime "$p")" || return 0
    echo "$p:$st"
    read -ra kids <<<"$(cat /proc/"$p"/task/*/children 2>/dev/null | tr '\n' ' ')"
    for c in "${kids[@]}"; do descendants "$c"; done
}

do_start() {
    if pid_alive rabbitmq "$RABBIT_SERVER" && amqp_ready "$PORT"; then
        log "already running: $(url_of "$PORT") (pid $(cat "$DIR/rabbitmq.pid"))"
        url_of "$PORT" >"$DIR/url"
        return 0
    fi
    if pid_alive rabbitmq "$RABBIT_SERVER"; then
        log "node pid $(cat "$DIR/rabbitmq.pid") runs but AMQP does not answer yet; waiting"
    else
        port_open "$PORT" && die "127.0.0.1:$PORT is in use by another process (set LXC_AGENT_RABBIT_PORT)"
        port_open "$DIST_PORT" && die "127.0.0.1:$DIST_PORT is in use (set LXC_AGENT_RABBIT_DIST_PORT)"
        write_config
        [ -x "$RABBIT_SERVER" ] || die "$RABBIT_SERVER missing (apt install rabbitmq-server)"
        if ! pid_alive epmd "$EPMD"; then
            port_open "$EPMD_PORT" && die "127.0.0.1:$EPMD_PORT is in use (set LXC_AGENT_RABBIT_EPMD_PORT)"
            start_bg epmd env ERL_EPMD_ADDRESS=127.0.0.1 "$EPMD" -address 127.0.0.1 -port "$EPMD_PORT"
            for ((i = 0; i < 100; i++)); do port_open "$EPMD_PORT" && break; sleep 0.1; done
            port_open "$EPMD_PORT" || die "epmd did not listen on 127.0.0.1:$EPMD_PORT (see $DIR/epmd.out)"
        fi
        local -a envs
        mapfile -t envs < <(rabbit_env)
        # -u: drop inherited RABBITMQ_*/ERL_* settings of the caller
        local -a unset=()
        local v
        for v in $(compgen -e); do
            case "$v" in RABBITMQ_* | ERL_* | NOTIFY_SOCKET) unset+=(-u "$v") ;; esac
        done
        start_bg rabbitmq env "${unset[@]}" "${envs[@]}" \
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}" \
            "$RABBIT_SERVER"
        log "started rabbitmq node $NODE (pid $(cat "$DIR/rabbitmq.pid"))"
    fi
    local start=$SECONDS
    until amqp_ready "$PORT"; do
        if ! pid_alive rabbitmq "$RABBIT_SERVER"; then
            tail -n 30 "$DIR/rabbitmq.out" "$DIR/log/$NODE.log" >&2 2>/dev/null || true
            do_stop
            die "rabbitmq-server exited during startup (logs in $DIR)"
        fi
        if ((SECONDS - start > START_TIMEOUT)); then
            tail -n 30 "$DIR/log/$NODE.log" >&2 2>/dev/null || true
            do_stop
            die "rabbitmq not ready on 127.0.0.1:$PORT after ${START_TIMEOUT}s"
        fi
        sleep 0.2
    done
    url_of "$PORT" >"$DIR/url"
    log "ready in $((SECONDS - start))s: $(url_of "$PORT")"
}

do_stop() {
    local left
    left="$(node_pids | tr '\n' ' ')"
    stop_pid rabbitmq "$RABBIT_SERVER"
    # beam's children in their own sessions (erl_child_setup, inet_gethost):
    # they exit with beam; KILL any that did not, by pid.
    local ps p st
    for ps in $left; do
        p="${ps%%:*}" st="${ps#*:}"
        if [ "$(starttime "$p" 2>/dev/null)" = "$st" ]; then
            log "killing leftover pid $p"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    stop_pid epmd "$EPMD"
    rm -f "$DIR/url" "$DIR/rabbitmq-beam.pid"
}

case "$CMD" in
start) do_start ;;
stop) do_stop ;;
url)
    pid_alive rabbitmq "$RABBIT_SERVER" || die "rabbitmq is not running under $DIR (hack/rabbitmq.sh start $DIR)"
    if [ -s "$DIR/url" ]; then cat "$DIR/url"; else url_of "$PORT"; fi
    ;;
status)
    if pid_alive rabbitmq "$RABBIT_SERVER" && amqp_ready "$PORT"; then
        echo "running: $(cat "$DIR/url" 2>/dev/null || url_of "$PORT") pid $(cat "$DIR/rabbitmq.pid")"
    else
        echo "not running"
        exit 1
    fi
    ;;
*) usage ;;
esac
