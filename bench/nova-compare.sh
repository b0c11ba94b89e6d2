#!/usr/bin/env bash
# lxc-agent vs Debian's stock nova-compute (libvirt.LibvirtDriver,
# virt_type=lxc), side by side in one run on one host: the same nova Zed
# control plane (internal/testenv: RabbitMQ, glance-api, mariadb, placement,
# nova-api, nova-conductor, nova-scheduler, all on 127.0.0.1), the same
# busybox raw ext4 image and flavor, networks "none". Servers are created
# and deleted through nova's REST API on one compute at a time (the other
# one disabled). Prints one Markdown table; see docs/benchmarks-nova.md.
# About 4 minutes on a 2-vCPU VM.
#
# Usage: bench/nova-compare.sh            (as root)
# Environment (defaults):
#   BENCH_N=5             servers per compute, one after the other, after one warm-up
#   BENCH_ORDER=lxc-agent,nova-compute    which compute is measured first
#   BENCH_REPORT=FILE     also write the table to FILE
#   BENCH_KEEP=1          keep the work directory (configs, logs of every service)
#   GO=go                 the go command
# Installs nova-compute, nova-compute-lxc and python3-libvirt when missing
# (apt-get; a policy-rc.d that exits 101 keeps their services from
# starting, and is removed again if this script created it). Everything the
# benchmark starts is stopped by pid; containers, domains, mounts and loop
# devices are released, on failure and Ctrl-C too.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${BENCH_N:-5}"
ORDER="${BENCH_ORDER:-lxc-agent,nova-compute}"
GO="${GO:-go}"

log() { printf '[nova-compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (containers, loop mounts, libvirtd)"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_N=$N: want a positive integer"
command -v "$GO" >/dev/null || die "$GO not found (set GO=/path/to/go)"

# The stock compute service and the libvirt bindings, if missing.
missing=()
for p in nova-compute nova-compute-lxc python3-libvirt; do
    if [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then missing+=("$p"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    debconf-set-selections <<'SEL'
nova-common nova/configure_db boolean false
nova-common nova/configure_rabbit boolean false
nova-common nova/configure_ksat boolean false
nova-common nova/configure_neutron boolean false
nova-common nova/configure_placement boolean false
SEL
    rc=0
    DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true apt-get -y -q \
        -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install --no-install-recommends "${missing[@]}" >&2 || rc=$?
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
fi

cmdline="bench/nova-compare.sh"
for v in BENCH_N BENCH_ORDER; do
    if [ -n "${!v:-}" ]; then cmdline="$v=${!v} $cmdline"; fi
done

bin="$(mktemp -d /tmp/lxc-agent-novacompare-bin.XXXXXX)"
benchpid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$benchpid" ] && kill -0 "$benchpid" 2>/dev/null; then
        # novacompare tears everything down on SIGTERM: give it time.
        kill -TERM "$benchpid" 2>/dev/null || true
        wait "$benchpid" 2>/dev/null || true
    fi
    rm -rf "$bin"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building lxc-agent and novacompare"
"$GO" build -o "$bin/lxc-agent" ./cmd/lxc-agent
"$GO" build -o "$bin/novacompare" ./bench/novacompare

args=(-agent "$bin/lxc-agent" -n "$N" -order "$ORDER" -command "$cmdline")
if [ "${BENCH_KEEP:-}" = 1 ]; then args+=(-keep); fi
"$bin/novacompare" "${args[@]}" >"$bin/report.md" &
benchpid=$!
rc=0
wait "$benchpid" || rc=$?
benchpid=""
[ "$rc" = 0 ] || die "novacompare failed (exit $rc)"

echo
cat "$bin/report.md"
if [ -n "${BENCH_REPORT:-}" ]; then cp "$bin/report.md" "$BENCH_REPORT"; fi
