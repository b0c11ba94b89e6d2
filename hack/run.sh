#!/usr/bin/env bash
# `make run`: the agent in the foreground with a working default config.
set -euo pipefail
cd "$(dirname "$0")/.."
conf=${CONFIG:-etc/lxc-agent.conf}
[ "$(id -u)" = 0 ] || { echo "the agent runs containers and mounts: run as root" >&2; exit 1; }

opt() { # opt SECTION KEY: value of KEY in [SECTION] of $conf, with $state_path expanded
  awk -v s="[$1]" -v k="$2" '
    /^\[/ {sec=$0} sec==s && $0 ~ "^"k"[ \t]*=" {sub("^[^=]*=[ \t]*",""); print; exit}' "$conf"
}
state=$(opt DEFAULT state_path); state=${state:-/var/lib/lxc-agent}
images=$(opt lxc_agent image_dir); images=${images//\$state_path/$state}; images=${images:-$state/images}
url=$(opt DEFAULT transport_url)

# A local broker that nobody answers on: start one.
hostport=$(sed -E 's#^[a-z]+://([^@/]*@)?([^,/]+).*#\2#' <<<"$url")
host=${hostport%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=5672
userinfo=$(sed -nE 's#^[a-z]+://([^@/]*)@.*#\1#p' <<<"$url")
case "$host" in
  127.0.0.1|localhost|::1)
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "starting a local RabbitMQ on 127.0.0.1:$port" >&2
      LXC_AGENT_RABBIT_PORT=$port LXC_AGENT_RABBIT_DIST_PORT=$((port + 20000)) \
        hack/rabbitmq.sh start "$state/rabbitmq"
    fi ;;
esac

mkdir -p "$images"
if [ ! -e "$images/busybox" ]; then
  hack/busybox-image.sh "$images/busybox" >/dev/null
  echo "demo image: $images/busybox (boot it with --image busybox)" >&2
fi
exec bin/lxc-agent serve --config-file "$conf"
