#!/usr/bin/env bash
# Builds a small raw ext4 image holding a busybox-static system whose init
# prints a boot line to the console and keeps running: the demo image.
#   hack/busybox-image.sh OUTPUT [SIZE_MB]
set -euo pipefail
out=$1; size=${2:-32}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
r=$tmp/rootfs
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,var/log}
cp /bin/busybox "$r/bin/busybox"
for a in sh ash ls cat echo sleep ip ifconfig hostname mount umount ps uname ping init halt poweroff reboot; do
  ln -sf busybox "$r/bin/$a"
done
ln -sf ../bin/busybox "$r/sbin/init"
cat > "$r/etc/inittab" <<'INIT'
::sysinit:/bin/echo "lxc-agent demo: init started on $(/bin/hostname)"
::sysinit:/bin/sh -c '/bin/ip -o -4 addr show | /bin/sed "s/^/lxc-agent demo: /"'
::respawn:/bin/sh -c 'exec /bin/sleep 2147483647'
::shutdown:/bin/echo "lxc-agent demo: halting"
INIT
ln -sf busybox "$r/bin/sed"
echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"
rm -f "$out"; truncate -s "${size}M" "$out"
mkfs.ext4 -q -F -d "$r" "$out"
echo "$out"
