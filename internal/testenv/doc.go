// Package testenv starts real services on 127.0.0.1 for the integration
// tests: a private RabbitMQ node (with its own epmd), a private glance-api
// (sqlite, file store, no auth), busybox-static root filesystems in raw ext4
// images, Debian's python3 with nova / oslo.messaging, and checks that a test
// left no mounts, loop devices or network links behind.
//
// Everything runs from Debian 12 packages: rabbitmq-server, glance-api,
// busybox-static, e2fsprogs, python3-nova, python3-oslo.messaging.
//
// Processes are started in their own process group and stopped by pid
// (SIGTERM, then SIGKILL for the group and every descendant after a
// timeout); nothing is ever signalled by name. They also get SIGTERM when the
// test binary dies (Pdeathsig).
//
// `make test` starts one broker for the whole run with hack/rabbitmq.sh and
// exports LXC_AGENT_AMQP_URL; RabbitMQ(t) then returns that URL instead of
// starting a node per test.
package testenv
