#!/usr/bin/env bash
# Container lifecycle latency and idle memory per backend, side by side in
# one run: go-lxc (liblxc, containers started from the re-executed forklxc
# helper) and libvirt-lxc (a private libvirtd in a slave mount namespace,
# started like internal/testenv does for the tests). For each backend,
# bench/lifecycle creates N busybox containers (busybox init + sleep, each on
# its own overlay of one busybox tree) and times through driver.Driver:
# create + start, clean stop, start, kill, soft and hard reboot, destroy
# (median, p90, min, max over N); then, with the N containers idle, the drop
# of MemAvailable per container, RSS and PSS of the container's processes
# and of its monitor ([lxc monitor] / libvirt_lxc), and their memory
# cgroups. Prints one report (Markdown); see docs/benchmarks-lifecycle.md.
# About 4 minutes on a 2-vCPU VM.
#
# Usage: bench/lifecycle.sh              (as root)
# Environment (defaults):
#   BENCH_N=10                containers per backend
#   BENCH_MEM_N=$BENCH_N      containers running in the memory phase (at least
#                             BENCH_N; more of them lift the MemAvailable drop
#                             above the host's noise)
#   BENCH_BACKENDS=lxc,libvirt-lxc
#   BENCH_GRACE=30            seconds a clean stop may take before the driver kills
#   BENCH_SETTLE=15           seconds the N containers stay idle before memory is read
#   BENCH_DIR=/var/tmp        where the work directory is made (a disk in the
#                             root mount namespace: libvirtd must see the overlays)
#   BENCH_REPORT=FILE         also write the report to FILE
#   BENCH_JSON=FILE           also write the raw samples (JSON) to FILE
#   BENCH_KEEP=1              keep the work directory (logs)
#   GO=go                     the go command
# Needs root, lxc (liblxc), libvirt-daemon-driver-lxc, libvirt-clients,
# busybox-static (hack/install-deps.sh test). Everything it starts is stopped
# by pid; containers, overlays and libvirtd are released on failure and
# Ctrl-C too; a crash of the Go program is swept up from its state file.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${BENCH_N:-10}"
MEM_N="${BENCH_MEM_N:-$N}"
BACKENDS="${BENCH_BACKENDS:-lxc,libvirt-lxc}"
GRACE="${BENCH_GRACE:-30}"
SETTLE="${BENCH_SETTLE:-15}"
PARENT="${BENCH_DIR:-/var/tmp}"
GO="${GO:-go}"

log() { printf '[lifecycle.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (containers, mounts, libvirtd)"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_N=$N: want a positive integer"
if ! [[ "$MEM_N" =~ ^[1-9][0-9]*$ ]] || [ "$MEM_N" -lt "$N" ]; then
    die "BENCH_MEM_N=$MEM_N: want an integer >= BENCH_N"
fi
[[ "$GRACE" =~ ^[1-9][0-9]*$ ]] || die "BENCH_GRACE=$GRACE: want seconds"
[[ "$SETTLE" =~ ^[0-9]+$ ]] || die "BENCH_SETTLE=$SETTLE: want seconds"
[[ "$BACKENDS" =~ ^(lxc|libvirt-lxc)(,(lxc|libvirt-lxc))*$ ]] || die "BENCH_BACKENDS=$BACKENDS: want lxc and/or libvirt-lxc"
command -v "$GO" >/dev/null || die "$GO not found (set GO=/path/to/go)"

# The command line as the report shows it: the script and the settings given.
cmdline="bench/lifecycle.sh"
for v in BENCH_N BENCH_MEM_N BENCH_BACKENDS BENCH_GRACE BENCH_SETTLE; do
    if [ -n "${!v:-}" ]; then cmdline="$v=${!v} $cmdline"; fi
done

mkdir -p "$PARENT"
work="$(mktemp -d "$PARENT/lxc-agent-lifecycle.XXXXXX")"
work="$(cd "$work" && pwd -P)"
run="$work/run"
state="$run/state.txt"
benchpid=""

cmdline_of() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }

# same_proc PID:STARTTICKS: the process PID runs and started at STARTTICKS
# (field 22 of /proc/PID/stat), i.e. it is the one recorded, not a reuse.
same_proc() {
    local pid="${1%:*}" ticks="${1#*:}" now
    [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
    now="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f20)" || return 1
    [ -n "$now" ] && [ "$now" = "$ticks" ]
}

# stop_pid PID NAME [SECS]: TERM, wait up to SECS (default 10), then KILL.
stop_pid() {
    local pid="$1" name="$2" secs="${3:-10}" i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# kill_tree PID: SIGKILL to the children of PID (a container's init: its pid
# namespace dies with it), then TERM/KILL to PID itself.
kill_tree() {
    local pid="$1" kid
    # shellcheck disable=SC2013 # pids, one word each
    for kid in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        kill -KILL "$kid" 2>/dev/null || true
    done
    stop_pid "$pid" "$(cat /proc/"$pid"/comm 2>/dev/null)" 5
}

# Last resort after bench/lifecycle (which releases everything itself):
# whatever its state file names that still runs, is mounted or defined.
sweep() {
    local left=0 lxcpath pid f m c a b i ids=() names=() holder lvd vlg uri n d
    if [ -n "$benchpid" ]; then
        # bench/lifecycle cleans up on SIGTERM: give it time.
        stop_pid "$benchpid" lifecycle 180
        wait "$benchpid" 2>/dev/null || true
    fi
    [ -f "$state" ] || return 0
    while read -r c a b; do
        [ "$c" = id ] || continue
        ids+=("$a")
        names+=("$b")
    done <"$state"
    # go-lxc: kill what runs under each lxcpath (the monitor cleans up
    # its cgroups once init is gone).
    # shellcheck disable=SC2013 # paths from mktemp, no spaces
    for lxcpath in $(awk '$1 == "lxcpath" {print $2}' "$state"); do
        for f in /proc/[0-9]*/cmdline; do
            pid="${f#/proc/}" pid="${pid%/cmdline}"
            c="$(cmdline_of "$pid")"
            if [[ "$c" == "[lxc monitor] $lxcpath "* ]]; then
                left=1
                log "container monitor still running: $c (pid $pid): killing its container"
                kill_tree "$pid"
            fi
        done
    done
    # libvirt-lxc: domains through virsh if our libvirtd still answers, then
    # the libvirt_lxc controllers named after our domains (their container
    # first), then the daemons. Pids are trusted only with the start time
    # recorded for them; a mount namespace id is not (ids are reused).
    while read -r c holder lvd vlg uri; do
        [ "$c" = libvirt ] || continue
        if same_proc "$lvd"; then
            for n in $(virsh -q -c "$uri" list --all --name 2>/dev/null); do
                left=1
                log "libvirt domain $n still defined: destroying it"
                virsh -q -c "$uri" destroy "$n" >/dev/null 2>&1 || true
                virsh -q -c "$uri" undefine "$n" >/dev/null 2>&1 || true
            done
        fi
        for f in /proc/[0-9]*/cmdline; do
            pid="${f#/proc/}" pid="${pid%/cmdline}"
            c="$(cmdline_of "$pid")"
            [[ "$c" == "/usr/lib/libvirt/libvirt_lxc --name "* ]] || continue
            for n in "${names[@]}"; do
                if [[ "$c" == *" --name $n "* ]]; then
                    left=1
                    log "libvirt_lxc controller still running: $c (pid $pid): killing its container"
                    kill_tree "$pid"
                fi
            done
        done
        for pid in "$lvd" "$vlg" "$holder"; do
            if same_proc "$pid"; then
                left=1
                log "still running: $(cmdline_of "${pid%:*}") (pid ${pid%:*}): stopping it"
                stop_pid "${pid%:*}" "$(cat /proc/"${pid%:*}"/comm 2>/dev/null)" 15
            fi
        done
    done <"$state"
    # Overlays, deepest first.
    while read -r m; do
        [ -n "$m" ] || continue
        left=1
        log "still mounted: $m (lazy unmount)"
        umount -l "$m" || true
    done < <(awk -v w="$work" '$5 == w || index($5, w "/") == 1 {print length($5), $5}' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
    # Empty cgroups named after the containers (a killed monitor or
    # controller leaves its own behind).
    for ((i = 0; i < ${#ids[@]}; i++)); do
        while read -r d; do
            [ -n "$d" ] || continue
            left=1
            log "cgroup left behind: $d (removing it)"
            rmdir "$d" 2>/dev/null || log "cannot remove $d"
        done < <(find /sys/fs/cgroup -depth -mindepth 2 -type d \( -name "*${ids[i]}*" -o -name "*${names[i]}*" \) 2>/dev/null)
    done
    return "$left"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ! sweep && [ "$rc" = 0 ]; then
        log "ERROR: bench/lifecycle left things behind (released now)"
        rc=1
    fi
    if [ "${BENCH_KEEP:-}" = 1 ] || [ "$rc" != 0 ]; then
        # The logs (driver logs, libvirtd's, console logs); not the rootfs.
        rm -rf --one-file-system "$run/rootfs" "$run"/*/inst/*/overlay 2>/dev/null || true
        log "work directory (logs) kept: $work"
    else
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building bench/lifecycle and lxc-agent (its forklxc helper starts the go-lxc containers)"
"$GO" build -o "$work/lifecycle" ./bench/lifecycle
"$GO" build -o "$work/lxc-agent" ./cmd/lxc-agent
mkdir "$run"
log "work directory $work; backends $BACKENDS, $N containers each ($MEM_N in the memory phase)"
"$work/lifecycle" -work "$run" -n "$N" -mem-n "$MEM_N" -backends "$BACKENDS" -grace "${GRACE}s" -settle "${SETTLE}s" \
    -helper "$work/lxc-agent" -json "$work/results.json" -command "$cmdline" >"$work/report.md" &
benchpid=$!
rc=0
wait "$benchpid" || rc=$?
benchpid=""
[ "$rc" = 0 ] || die "bench/lifecycle failed (exit $rc)"

echo
cat "$work/report.md"
if [ -n "${BENCH_REPORT:-}" ]; then cp "$work/report.md" "$BENCH_REPORT"; fi
if [ -n "${BENCH_JSON:-}" ]; then cp "$work/results.json" "$BENCH_JSON"; fi
