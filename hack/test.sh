#!/usr/bin/env bash
# Runs the whole test suite against real components: one RabbitMQ broker on
# 127.0.0.1 for the run (tests that restart a broker start their own),
# real containers, loop devices, bridges and namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make test needs root (containers, mounts, netlink)" >&2; exit 1; }
work=$(mktemp -d /tmp/lxc-agent-test.XXXXXX)
cleanup() { hack/rabbitmq.sh stop "$work/rabbit" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
hack/rabbitmq.sh start "$work/rabbit"
export LXC_AGENT_AMQP_URL="$(hack/rabbitmq.sh url "$work/rabbit")"
export LXC_AGENT_INTEGRATION=1
go test -count=1 -timeout 20m ./... "$@"
