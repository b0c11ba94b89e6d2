#!/usr/bin/env bash
# RPC round trips per second: lxc-agent's Go rpc.Server vs an oslo.messaging
# RPC server set up like nova-compute's, side by side on one private RabbitMQ
# (127.0.0.1), each called by lxc-agent's Go rpc.Client (go test -bench
# ./bench/rpcbench) and by oslo.messaging's RPCClient (bench/oslo_rpc.py),
# one call at a time and from 16 concurrent callers. The call is nova's
# baseapi ping (a no-op that echoes its argument), so this measures the RPC
# stack: client, broker and server. Prints one table; see docs/benchmarks.md.
#
# Usage: bench/rpc-roundtrip.sh          (also: make bench)
# Environment (defaults):
#   BENCH_SEQ=2000       sequential calls per client and server
#   BENCH_CONC=4000      concurrent calls per client and server
#   BENCH_THREADS=16     concurrent callers (goroutines / Python threads)
#   BENCH_WARMUP=200     warm-up calls per client and server (seq + concurrent)
#   BENCH_ROUNDS=3       rounds (Go client, then oslo client, each against
#                        both servers); the table shows medians
#   BENCH_SETTLE=10      seconds of rest between server start-up and measuring
#   BENCH_KEEP=1         keep the work directory (logs, raw results)
#   LXC_AGENT_RABBIT_PORT=5699, LXC_AGENT_RABBIT_DIST_PORT=25699,
#   LXC_AGENT_RABBIT_EPMD_PORT=4499   the private broker's ports (kept apart
#                        from `make test`'s broker on 5679)
# Needs: go, rabbitmq-server, python3-nova and python3-oslo.messaging (Debian's
# /usr/bin/python3). Processes are stopped by the pids this script recorded.
set -euo pipefail
cd "$(dirname "$0")/.."

SEQ="${BENCH_SEQ:-2000}"
CONC="${BENCH_CONC:-4000}"
THREADS="${BENCH_THREADS:-16}"
WARMUP="${BENCH_WARMUP:-200}"
ROUNDS="${BENCH_ROUNDS:-3}"
SETTLE="${BENCH_SETTLE:-10}"
export LXC_AGENT_RABBIT_PORT="${LXC_AGENT_RABBIT_PORT:-5699}"
export LXC_AGENT_RABBIT_DIST_PORT="${LXC_AGENT_RABBIT_DIST_PORT:-25699}"
export LXC_AGENT_RABBIT_EPMD_PORT="${LXC_AGENT_RABBIT_EPMD_PORT:-4499}"
GO_SERVER=bench-go
OSLO_SERVER=bench-oslo
PYTHON=/usr/bin/python3 # Debian's, with nova; never the pyenv python3 in PATH

for v in SEQ CONC THREADS WARMUP ROUNDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_$v=${!v}: want a positive integer" >&2; exit 2; }
done
[[ "$SETTLE" =~ ^[0-9]+$ ]] || { echo "BENCH_SETTLE=$SETTLE: want seconds" >&2; exit 2; }

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

log() { printf '[rpc-roundtrip %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

work="$(mktemp -d /tmp/lxc-agent-bench.XXXXXX)"
gopid="" pypid=""

# stop_pid PID NAME: TERM, wait up to 10 s, then KILL.
stop_pid() {
    local pid="$1" name="$2" i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop_pid "$gopid" "Go server"
    stop_pid "$pypid" "oslo server"
    hack/rabbitmq.sh stop "$work/rabbit" >/dev/null 2>&1 || true
    if [ "$rc" != 0 ] || [ "${BENCH_KEEP:-}" = 1 ]; then
        log "work directory (logs, raw results) kept: $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Debian's python3 without pyenv/virtualenv settings (prefix arrays, so that
# `timeout` can run them); pyrun also tells it where the broker is.
pyenv=(env -u PYTHONPATH -u PYTHONHOME -u PYENV_VERSION PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH")
pyrun=()

# wait_ready PID FILE NAME: until FILE has a line starting with "ready".
wait_ready() {
    local pid="$1" file="$2" name="$3" i
    for ((i = 0; i < 600; i++)); do
        grep -q '^ready' "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$file" "$file.err" >&2 || true; die "$name exited during startup"; }
        sleep 0.1
    done
    tail -n 30 "$file" "$file.err" >&2 || true
    die "$name not ready after 60 s"
}

command -v go >/dev/null || die "go not found"
"${pyenv[@]}" "$PYTHON" -c 'import oslo_messaging, nova.baserpc' 2>/dev/null ||
    die "$PYTHON cannot import oslo_messaging and nova (apt install python3-nova python3-oslo.messaging)"

log "building the Go server and the benchmark binary"
go build -o "$work/goserver" ./bench/rpcbench/cmd/goserver
go test -c -o "$work/rpcbench.test" ./bench/rpcbench/

hack/rabbitmq.sh start "$work/rabbit"
url="$(hack/rabbitmq.sh url "$work/rabbit")"
pyrun=("${pyenv[@]}" AMQP_URL="$url" "$PYTHON")

"$work/goserver" -url "$url" -server "$GO_SERVER" >"$work/goserver.out" 2>"$work/goserver.out.err" </dev/null &
gopid=$!
"${pyrun[@]}" bench/oslo_rpc.py server "$OSLO_SERVER" >"$work/osloserver.out" 2>"$work/osloserver.out.err" </dev/null &
pypid=$!
wait_ready "$gopid" "$work/goserver.out" "Go server"
wait_ready "$pypid" "$work/osloserver.out" "oslo server"
oslo_ready="$(head -n 1 "$work/osloserver.out")"
log "servers up: Go pid $gopid, oslo pid $pypid ($oslo_ready); settling ${SETTLE}s"
sleep "$SETTLE"

# CPU accounting, to tell how much of the machine others used meanwhile:
# whole machine from /proc/stat, ours = broker + servers (/proc/PID/stat)
# + the clients (this shell's waited-for children, bash `times`).
HZ="$(getconf CLK_TCK)"
# machine_ticks: busy (user nice system) and steal ticks, all CPUs (softirq,
# where loopback TCP is largely processed, is left out: it is nobody's)
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat; }
# proc_ticks PID: utime+stime of PID (all its threads), 0 if gone
proc_ticks() {
    local s f
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    read -ra f <<<"${s##*) }"
    echo $((f[11] + f[12]))
}
# ours_ticks: set OURS to the CPU ticks used so far by the broker, the
# servers, this shell and its finished children (`times` must run in this
# shell, not in a $(...) subshell).
ours_ticks() {
    local kids
    times >"$work/times.txt"
    kids="$(awk -v hz="$HZ" '{ for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } }
        END { print int(t * hz) }' "$work/times.txt")" # this shell and its waited-for children
    OURS=$(($(proc_ticks "$(cat "$work/rabbit/rabbitmq-beam.pid")") + $(proc_ticks "$gopid") + $(proc_ticks "$pypid") + kids))
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${load_before%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "WARNING: load average $load_before on $(nproc) CPUs before measuring: expect noisy numbers"
fi
read -r busy0 steal0 < <(machine_ticks)
ours_ticks
ours0=$OURS
t0="$EPOCHREALTIME"
started="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"

export LXC_AGENT_BENCH_AMQP_URL="$url" LXC_AGENT_BENCH_GO_SERVER="$GO_SERVER" \
    LXC_AGENT_BENCH_OSLO_SERVER="$OSLO_SERVER" LXC_AGENT_BENCH_CONCURRENCY="$THREADS" \
    LXC_AGENT_BENCH_WARMUP="$WARMUP"
: >"$work/results.txt"
for ((round = 1; round <= ROUNDS; round++)); do
    # Go client: the benchmark binary, run once per mode so that each mode
    # gets its own fixed call count (-test.benchtime Nx).
    : >"$work/go-bench.$round.txt"
    for mode in sequential:"$SEQ" parallel:"$CONC"; do
        log "round $round/$ROUNDS: Go client, ${mode%%:*}, ${mode#*:} calls per server"
        if ! (cd bench/rpcbench && "$work/rpcbench.test" -test.run '^$' -test.bench "/${mode%%:*}\$" \
            -test.benchtime "${mode#*:}x" -test.timeout 10m) >>"$work/go-bench.$round.txt" 2>&1; then
            cat "$work/go-bench.$round.txt" >&2
            die "Go benchmarks failed"
        fi
    done
    if grep -q -- '--- SKIP' "$work/go-bench.$round.txt"; then
        cat "$work/go-bench.$round.txt" >&2
        die "Go benchmarks skipped"
    fi
    # Benchmark lines -> RESULT lines like the Python client's.
    awk -v round="$round" '/^BenchmarkPing/ {
            server = ($1 ~ /GoServer/) ? "go" : "oslo"
            mode = ($1 ~ /\/sequential/) ? "seq" : "conc"
            for (i = 3; i <= NF; i++) v[$i] = $(i - 1)
            printf "RESULT round=%d client=go server=%s mode=%s workers=%d calls=%d errors=0 seconds=%.3f calls_per_s=%s p50_ms=%s p99_ms=%s\n",
                round, server, mode, v["workers"], $2, $2 * v["ns/op"] / 1e9, v["calls/s"], v["p50-ms"], v["p99-ms"]
        }' "$work/go-bench.$round.txt" >>"$work/results.txt"

    log "round $round/$ROUNDS: oslo client, $SEQ sequential, then $CONC from $THREADS threads, per server"
    if ! timeout 900 "${pyrun[@]}" bench/oslo_rpc.py client --seq "$SEQ" --conc "$CONC" --threads "$THREADS" \
        --warmup "$WARMUP" --deadline 600 go="$GO_SERVER" oslo="$OSLO_SERVER" \
        >"$work/oslo-bench.$round.txt" 2>"$work/oslo-bench.$round.err"; then
        cat "$work/oslo-bench.$round.txt" "$work/oslo-bench.$round.err" >&2
        die "oslo client benchmark failed"
    fi
    sed -n "s/^RESULT /RESULT round=$round /p" "$work/oslo-bench.$round.txt" >>"$work/results.txt"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
read -r busy1 steal1 < <(machine_ticks)
ours_ticks
ours1=$OURS
t1="$EPOCHREALTIME"
cpu_share="$(awk -v hz="$HZ" -v n="$(nproc)" -v t0="$t0" -v t1="$t1" -v busy=$((busy1 - busy0)) \
    -v steal=$((steal1 - steal0)) -v ours=$((ours1 - ours0)) 'BEGIN {
        s = t1 - t0; cap = hz * n * s; other = busy - ours; if (other < 0) other = 0
        printf "%.0f s x %d CPUs: this benchmark (broker, servers, clients) %.0f%%, other processes %.0f%%, steal %.0f%%",
            s, n, 100 * ours / cap, 100 * other / cap, 100 * steal / cap }')"
stop_pid "$gopid" "Go server"
stop_pid "$pypid" "oslo server"
gopid="" pypid=""
[ "$(wc -l <"$work/results.txt")" = $((8 * ROUNDS)) ] || { cat "$work/results.txt" >&2; die "expected $((8 * ROUNDS)) results"; }

pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
echo
echo "RPC round trips: nova baseapi ping (no-op), Target(topic=compute, server=...), one RabbitMQ on 127.0.0.1"
echo "date:     $started"
echo "machine:  nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "load avg: at start $load_start, before measuring $load_before, after $load_after"
echo "cpu use:  $cpu_share"
echo "software: $(go version | cut -d' ' -f3), rabbitmq-server $(pkgver rabbitmq-server), erlang $(pkgver erlang-base), python3-oslo.messaging $(pkgver python3-oslo.messaging), python3-nova $(pkgver python3-nova), python3-eventlet $(pkgver python3-eventlet)"
echo "servers:  Go = lxc-agent rpc.Server + rpc.BaseAPI(\"compute\"), 64 handlers; oslo = nova.rpc.get_server + nova.baserpc.BaseRPCAPI ($oslo_ready)"
echo "clients:  Go = rpc.Client (go test -bench); oslo = nova.rpc.get_client RPCClient, eventlet monkey patched like nova's services"
echo "counts:   per round, client and server: $SEQ sequential calls, $CONC calls from $THREADS concurrent callers, after $WARMUP+$WARMUP warm-up calls; $ROUNDS rounds"
echo "cells:    median over the rounds; Go/oslo = median of the per-round ratios (min-max)"
echo
awk -v threads="$THREADS" '
    function val(k,   i, kv) { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return "" }
    # median of the n values in a[1..n] (sorted in place)
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function med(k, field,   r, a) { for (r = 1; r <= rounds; r++) a[r] = v[k, r, field]; return median(a, rounds) }
    /^RESULT/ {
        r = val("round") + 0; if (r > rounds) rounds = r
        k = val("client") SUBSEP val("mode") SUBSEP val("server")
        v[k, r, "cps"] = val("calls_per_s") + 0; v[k, r, "p50"] = val("p50_ms") + 0; v[k, r, "p99"] = val("p99_ms") + 0
        errs += val("errors"); calls += val("calls")
    }
    END {
        cname["go"] = "Go rpc.Client"; cname["oslo"] = "oslo RPCClient"
        mname["seq"] = "sequential"; mname["conc"] = threads " concurrent"
        printf "%-15s %-14s | %-29s | %-29s | %s\n", "", "", "server: Go rpc.Server", "server: oslo.messaging", "ratio"
        printf "%-15s %-14s | %9s %9s %9s | %9s %9s %9s | %s\n", "client", "callers", "calls/s", "p50 ms", "p99 ms", "calls/s", "p50 ms", "p99 ms", "Go/oslo calls/s"
        printf "%s\n", "------------------------------------------------------------------------------------------------------------------"
        split("go oslo", cl, " "); split("seq conc", ml, " ")
        for (c = 1; c <= 2; c++) for (m = 1; m <= 2; m++) {
            g = cl[c] SUBSEP ml[m] SUBSEP "go"; o = cl[c] SUBSEP ml[m] SUBSEP "oslo"
            lo = ""; hi = ""
            for (r = 1; r <= rounds; r++) {
                q[r] = v[g, r, "cps"] / v[o, r, "cps"]
                if (lo == "" || q[r] < lo) lo = q[r]
                if (hi == "" || q[r] > hi) hi = q[r]
            }
            printf "%-15s %-14s | %9.0f %9.2f %9.2f | %9.0f %9.2f %9.2f | %5.2fx (%.2f-%.2f)\n", cname[cl[c]], mname[ml[m]],
                med(g, "cps"), med(g, "p50"), med(g, "p99"), med(o, "cps"), med(o, "p50"), med(o, "p99"), median(q, rounds), lo, hi
        }
        printf "\n%d measured calls, %d errors or timeouts (every call answered, every reply checked).\n", calls, errs
    }' "$work/results.txt"

# Each server gets, per round, from the Go client per mode (two runs of the
# benchmark binary): 2*WARMUP warm-up calls, testing's 1-iteration probe and
# the measured calls; from the oslo client 2*WARMUP + SEQ + CONC.
expected=$(((6 * WARMUP + 2 * SEQ + 2 * CONC + 2) * ROUNDS))
go_handled="$(awk '/^handled/ {print $2}' "$work/goserver.out")"
oslo_answered="$(awk '/^answered/ {print $2}' "$work/osloserver.out")"
echo "server side: Go server handled ${go_handled:-?} messages ($(grep -o '[0-9]* failed' "$work/goserver.out" || echo '? failed')), oslo server answered ${oslo_answered:-?} pings; expected $expected each"
if [ "$go_handled" != "$expected" ] || [ "$oslo_answered" != "$expected" ]; then
    echo "WARNING: server-side counts differ from the calls made"
fi
