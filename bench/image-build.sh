#!/usr/bin/env bash
# Image builds: lxc-agent against the same work done by hand, side by side in
# one run, on a private glance-api (127.0.0.1):
#   - cold build (download + verify + base + overlay, fresh cache each time)
#     by lxc-agent's pkg/rootfs (Cache.Fetch + Mounter.Prepare) and by hand
#     with curl, jq, sha512sum and mount -o loop / qemu-img convert / tar plus
#     mount -t overlay (bench/imagebench/byhand.sh);
#   - warm build (image cached) to a ready rootfs: the first instance, and
#     instance after instance while the base is mounted (median, p95);
#   - the disk and memory each instance costs, against a full copy per
#     instance.
# Images: a busybox rootfs padded with incompressible files (64 and 256 MiB),
# as raw ext4, qcow2, tar.gz and tar.zst. Prints one report (Markdown); see
# docs/benchmarks-images.md. About 4 minutes on a 2-vCPU VM.
#
# Usage: bench/image-build.sh            (as root)
# Environment (defaults):
#   BENCH_SIZES=64,256        payload sizes in MiB
#   BENCH_FORMATS=raw,qcow2,tar.gz,tar.zst
#   BENCH_REPS=5              cold builds per side and image
#   BENCH_FIRST_REPS=3        warm builds per image that make the base again
#   BENCH_INSTANCES=50        warm instances per image (disk/memory measured on them)
#   BENCH_COPIES=3            full copies per image for the comparison (0: none)
#   BENCH_DROP_CACHES=1       drop the page cache before every cold build (0: sync only)
#   BENCH_DIR=/var/tmp        where the work directory is made (a disk, not tmpfs)
#   BENCH_REPORT=FILE         also write the report to FILE
#   BENCH_JSON=FILE           also write the raw samples (JSON) to FILE
#   BENCH_KEEP=1              keep the work directory (logs, glance's)
#   GO=go                     the go command
# Needs root, glance-api, qemu-utils, qemu-system-common (qemu-storage-daemon),
# busybox-static, e2fsprogs, curl, jq, zstd (hack/install-deps.sh test).
# Everything it starts is stopped by pid; every mount and loop device it made
# is released, on failure and Ctrl-C too.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${BENCH_SIZES:-64,256}"
FORMATS="${BENCH_FORMATS:-raw,qcow2,tar.gz,tar.zst}"
REPS="${BENCH_REPS:-5}"
FIRST_REPS="${BENCH_FIRST_REPS:-3}"
INSTANCES="${BENCH_INSTANCES:-50}"
COPIES="${BENCH_COPIES:-3}"
DROP="${BENCH_DROP_CACHES:-1}"
PARENT="${BENCH_DIR:-/var/tmp}"
GO="${GO:-go}"

log() { printf '[image-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (loop devices, mount, drop_caches)"
for v in REPS FIRST_REPS INSTANCES; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v=${!v}: want a positive integer"
done
[[ "$COPIES" =~ ^[0-9]+$ ]] || die "BENCH_COPIES=$COPIES: want a count"
[[ "$SIZES" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "BENCH_SIZES=$SIZES: want MiB,MiB,..."
case "$DROP" in
1) drop=true ;;
0) drop=false ;;
*) die "BENCH_DROP_CACHES=$DROP: want 0 or 1" ;;
esac
command -v "$GO" >/dev/null || die "$GO not found (set GO=/path/to/go)"

# The command line as the report shows it: the script and the settings given.
cmdline="bench/image-build.sh"
for v in BENCH_SIZES BENCH_FORMATS BENCH_REPS BENCH_FIRST_REPS BENCH_INSTANCES BENCH_COPIES BENCH_DROP_CACHES; do
    if [ -n "${!v:-}" ]; then cmdline="$v=${!v} $cmdline"; fi
done

mkdir -p "$PARENT"
work="$(mktemp -d "$PARENT/lxc-agent-imagebench.XXXXXX")"
work="$(cd "$work" && pwd -P)"
benchpid=""

# cmdline PID: the command line of PID, arguments separated by spaces.
cmdline_of() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }

# alive PID PATH: PID runs and its command line mentions PATH (guards
# against a reused pid).
alive() {
    local c
    [ -n "$1" ] || return 1
    c="$(cmdline_of "$1")"
    [[ "$c" == *"$2"* ]]
}

# stop_pid PID NAME: TERM, wait up to $3 seconds (default 10), then KILL.
stop_pid() {
    local pid="$1" name="$2" secs="${3:-10}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Last resort after imagebench (which releases everything itself): anything
# still mounted, attached or running under the work directory.
sweep() {
    local left=0 m d f pid gpid c
    if [ -n "$benchpid" ]; then
        # imagebench cleans up on SIGTERM: give it time.
        stop_pid "$benchpid" imagebench 120
        wait "$benchpid" 2>/dev/null || true
    fi
    gpid="$(cat "$work/run/glance.pid" 2>/dev/null || true)"
    if alive "$gpid" "$work"; then
        left=1
        log "glance-api (pid $gpid) still running: stopping it"
        stop_pid "$gpid" glance-api
        # Its workers: same process group, same config under $work.
        for pid in $(pgrep -g "$gpid" || true); do
            if alive "$pid" "$work"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done
    fi
    # Deepest mounts first.
    while read -r m; do
        [ -n "$m" ] || continue
        left=1
        log "still mounted: $m (lazy unmount)"
        umount -l "$m" || true
    done < <(awk -v w="$work" '$5 == w || index($5, w "/") == 1 {print length($5), $5}' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
    # qcow2 FUSE exports: by the export path (under our base directory) in
    # their command line, never by name.
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}" pid="${pid%/cmdline}"
        c="$(cmdline_of "$pid")"
        if [[ "$c" == *" --export "*"$work/run/agent/mnt/.state/"* ]]; then
            left=1
            log "qemu-storage-daemon (pid $pid) exporting under $work: stopping it"
            stop_pid "$pid" qemu-storage-daemon
        fi
    done
    for f in /sys/block/loop*/loop/backing_file; do
        [ -r "$f" ] || continue
        case "$(cat "$f" 2>/dev/null)" in
        "$work"/*)
            d="/dev/$(basename "$(dirname "$(dirname "$f")")")"
            left=1
            log "loop device $d still attached to $(cat "$f"): detaching it"
            losetup -d "$d" || true
            ;;
        esac
    done
    return "$left"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ! sweep && [ "$rc" = 0 ]; then
        log "ERROR: imagebench left things behind (released now)"
        rc=1
    fi
    if [ "${BENCH_KEEP:-}" = 1 ]; then
        log "work directory kept: $work"
    elif [ "$rc" != 0 ]; then
        # Keep the logs (glance's, the report so far), not the images.
        rm -rf --one-file-system "$work/run/glance/images" "$work/run/src" "$work/run/agent" "$work/run/hand"
        log "work directory (logs) kept: $work"
    else
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building imagebench"
"$GO" build -o "$work/imagebench" ./bench/imagebench/cmd/imagebench
mkdir "$work/run"
log "work directory $work ($(df -h --output=source,fstype "$work" | tail -1 | tr -s ' '))"
log "running: sizes $SIZES MiB, formats $FORMATS, $REPS cold builds per side, $INSTANCES warm instances"
"$work/imagebench" -work "$work/run" -sizes "$SIZES" -formats "$FORMATS" -reps "$REPS" -first-reps "$FIRST_REPS" \
    -instances "$INSTANCES" -copies "$COPIES" -drop-caches="$drop" -json "$work/results.json" \
    -command "$cmdline" >"$work/report.md" &
benchpid=$!
rc=0
wait "$benchpid" || rc=$?
benchpid=""
[ "$rc" = 0 ] || die "imagebench failed (exit $rc)"

echo
cat "$work/report.md"
if [ -n "${BENCH_REPORT:-}" ]; then cp "$work/report.md" "$BENCH_REPORT"; fi
if [ -n "${BENCH_JSON:-}" ]; then cp "$work/results.json" "$BENCH_JSON"; fi
