#!/usr/bin/env bash
# Installs the Debian 12 packages lxc-agent needs: "run" for the agent, "test"
# for the whole test suite. Only missing packages are installed; package
# scripts are kept from starting daemons (the agent and tests start their own).
set -euo pipefail

RUN_PKGS=(lxc lxc-dev liblxc1 pkg-config gcc rabbitmq-server busybox-static e2fsprogs iproute2 util-linux qemu-utils qemu-system-common kmod xz-utils libvirt-dev libvirt0)
TEST_PKGS=("${RUN_PKGS[@]}" python3-oslo.messaging python3-nova glance-api curl jq procps psmisc xfsprogs btrfs-progs squashfs-tools fdisk dosfstools zstd bzip2 tar libvirt-daemon libvirt-daemon-driver-lxc libvirt-clients
  nova-api nova-conductor nova-scheduler placement-api mariadb-server mariadb-client python3-pymysql uwsgi-core uwsgi-plugin-python3
  openvswitch-switch)

case "${1:-run}" in
  run) want=("${RUN_PKGS[@]}") ;;
  test) want=("${TEST_PKGS[@]}") ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
# The tests run their own nova/placement/mariadb (internal/testenv): keep the
# packages from configuring databases (dbconfig-common), keystone, rabbit or
# API endpoints during installation.
debconf-set-selections <<'SEL'
nova-common nova/configure_db boolean false
nova-common nova/configure_rabbit boolean false
nova-common nova/configure_ksat boolean false
nova-common nova/configure_neutron boolean false
nova-common nova/configure_placement boolean false
nova-api novaapi/configure_db boolean false
nova-api nova/configure_api-endpoint boolean false
placement-common placement/configure_db boolean false
placement-common placement/configure_ksat boolean false
placement-api placement/configure_api-endpoint boolean false
SEL
apt_opts=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
apt-get -q -o DPkg::Lock::Timeout=600 update
apt-get install "${apt_opts[@]}" "${missing[@]}"
