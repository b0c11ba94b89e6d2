#!/usr/bin/env bash
# The "by hand" side of bench/image-build.sh: the same work as lxc-agent's
# rootfs.Cache.Fetch + Mounter.Prepare (download from Glance, verify the
# sha512 Glance recorded, make a read-only base, put a writable overlay on
# top), done the way an operator would script it with curl, jq, sha512sum,
# qemu-img, tar and mount. imagebench runs it and times it with its own clock;
# the phase times it prints come from bash's $EPOCHREALTIME.
#
#   byhand.sh build FORMAT GLANCE_URL IMAGE_ID DIR
#       FORMAT: raw | qcow2 | tar.gz | tar.zst. Everything goes under DIR
#       (created): image, base/, upper/, work/, rootfs/ (the overlay).
#       Prints "download US verify US prepare US" (microseconds).
#   byhand.sh release DIR
#       Unmounts DIR/rootfs and DIR/base (mount -o loop sets autoclear, so
#       the loop device goes with the unmount) and deletes DIR.
#
# qcow2: qemu-nbd needs the nbd kernel module, which this host does not have,
# so the by-hand way is qemu-img convert to a raw file, then as raw.
set -euo pipefail

us() { echo "${EPOCHREALTIME/./}"; } # wall clock in microseconds

build() {
    local fmt="$1" url="$2" id="$3" d="$4" want got t0 t1 t2 t3
    mkdir -p "$d"
    t0=$(us)
    want=$(curl -sSf --noproxy '*' "$url/v2/images/$id" | jq -r .os_hash_value)
    curl -sSf --noproxy '*' -o "$d/image" "$url/v2/images/$id/file"
    t1=$(us)
    got=$(sha512sum "$d/image")
    if [ "${got%% *}" != "$want" ]; then
        echo "sha512 of $d/image is ${got%% *}, glance says $want" >&2
        exit 1
    fi
    t2=$(us)
    mkdir "$d/base" "$d/upper" "$d/work" "$d/rootfs"
    case "$fmt" in
    raw) mount -o loop,ro "$d/image" "$d/base" ;;
    qcow2)
        qemu-img convert -f qcow2 -O raw "$d/image" "$d/image.raw"
        mount -o loop,ro "$d/image.raw" "$d/base"
        ;;
    tar.gz) tar -xzf "$d/image" -C "$d/base" ;;
    tar.zst) tar --zstd -xf "$d/image" -C "$d/base" ;;
    *)
        echo "unknown format $fmt" >&2
        exit 2
        ;;
    esac
    mount -t overlay overlay -o "lowerdir=$d/base,upperdir=$d/upper,workdir=$d/work" "$d/rootfs"
    cat "$d/rootfs/etc/lxc-agent-bench" >/dev/null
    t3=$(us)
    echo "download $((t1 - t0)) verify $((t2 - t1)) prepare $((t3 - t2))"
}

release() {
    local d="$1" m
    for m in "$d/rootfs" "$d/base"; do
        if mountpoint -q "$m"; then umount "$m"; fi
    done
    rm -rf "$d"
}

usage() {
    echo "usage: $0 build FORMAT GLANCE_URL IMAGE_ID DIR | release DIR" >&2
    exit 2
}

case "${1:-}/$#" in
build/5) build "$2" "$3" "$4" "$5" ;;
release/2) release "$2" ;;
*) usage ;;
esac
