#!/usr/bin/python3
"""The oslo.messaging side of bench/rpc-roundtrip.sh.

  oslo_rpc.py server NAME
      An RPC server set up the way nova-compute sets one up: eventlet monkey
      patching first (nova/cmd/__init__.py imports nova.monkey_patch),
      nova.config.parse_args, then nova.rpc.get_server (executor 'eventlet',
      nova's RequestContextSerializer around NovaObjectSerializer) for
      Target(topic='compute', server=NAME) with nova's own
      nova.baserpc.BaseRPCAPI('compute') endpoint (namespace baseapi, version
      1.1: ping(ctxt, arg) -> {'service': 'compute', 'arg': arg}). Prints
      "ready" once it consumes; on SIGTERM/SIGINT prints how many pings it
      answered and exits.

  oslo_rpc.py client [--seq N] [--conc N] [--threads N] [--warmup N]
                     [--timeout S] [--deadline S] LABEL=SERVER...
      nova's baseapi client (nova.rpc.get_client(Target(topic='compute',
      namespace='baseapi', version='1.0')), as nova.baserpc.BaseAPI builds it)
      calls ping with prepare(server=SERVER) against each server: N sequential
      calls, then N calls from --threads threads. Like every nova service that
      calls compute (nova-conductor, nova-api), it runs eventlet monkey
      patched, so the threads are green threads; --no-monkey-patch uses
      native threads instead. One line per measurement:
        RESULT client=oslo server=LABEL mode=seq|conc workers=.. calls=..
               errors=.. seconds=.. calls_per_s=.. p50_ms=.. p99_ms=..

Environment: AMQP_URL (amqp:// or rabbit://). Run with Debian's /usr/bin/python3
(python3-nova, python3-oslo.messaging).
"""
import os
import sys

# Decide on monkey patching before anything imports eventlet or nova; nova
# itself honours OS_NOVA_DISABLE_EVENTLET_PATCHING.
if "--no-monkey-patch" in sys.argv:
    sys.argv.remove("--no-monkey-patch")
    os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    MONKEY_PATCHED = False
else:
    os.environ.pop("OS_NOVA_DISABLE_EVENTLET_PATCHING", None)
    MONKEY_PATCHED = True
import nova.monkey_patch  # noqa: E402,F401  (first, like nova/cmd/__init__.py)

import argparse  # noqa: E402
import itertools  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import oslo_messaging as messaging  # noqa: E402

import nova.conf  # noqa: E402
from nova import baserpc  # noqa: E402
from nova import config as nova_config  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
from nova import rpc as nova_rpc  # noqa: E402
from nova.objects import base as nova_base  # noqa: E402


def leave(code):
    # oslo.messaging 14's metrics thread is not a daemon and keeps an exiting
    # process alive for about ten seconds: flush and leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def setup(prog):
    url = os.environ["AMQP_URL"].replace("amqp://", "rabbit://", 1)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write("[DEFAULT]\ntransport_url = %s\n" % url)
    try:
        nova_config.parse_args([prog, "--config-file", f.name])
    finally:
        os.unlink(f.name)
    objects.register_all()


class CountingBaseRPCAPI(baserpc.BaseRPCAPI):
    """nova's baseapi endpoint, counting the pings it answers."""

    answered = 0

    def ping(self, context, arg):
        r = super().ping(context, arg)
        CountingBaseRPCAPI.answered += 1
        return r


def serve(name):
    setup("oslo-rpc-bench-server")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    target = messaging.Target(topic="compute", server=name)
    endpoint = CountingBaseRPCAPI("compute", None)
    server = nova_rpc.get_server(target, [endpoint], nova_base.NovaObjectSerializer())
    server.start()
    print("ready executor=%s monkey_patched=%s" % (server.executor_type, MONKEY_PATCHED), flush=True)
    while not stop.is_set():
        time.sleep(0.2)
    print("answered %d pings" % CountingBaseRPCAPI.answered)
    leave(0)


def percentile(sorted_lat, permille):
    """Nearest-rank percentile of a sorted list (permille: 500 = median)."""
    if not sorted_lat:
        return float("nan")
    i = (permille * len(sorted_lat) + 999) // 1000 - 1
    return sorted_lat[max(0, min(len(sorted_lat) - 1, i))]


class Bench:
    def __init__(self, timeout, deadline):
        self.ctx = nova_context.get_admin_context()
        self.client = nova_rpc.get_client(
            messaging.Target(topic="compute", namespace="baseapi", version="1.0"))
        self.timeout = timeout
        self.deadline = time.monotonic() + deadline
        self.seq = itertools.count()

    def ping(self, cctxt):
        arg = "bench-%d" % next(self.seq)
        r = cctxt.call(self.ctx, "ping", arg=arg)
        if r != {"service": "compute", "arg": arg}:
            raise AssertionError("unexpected reply %r" % (r,))

    def run(self, server, calls, workers):
        """calls pings from workers threads; returns (seconds, latencies, errors)."""
        cctxt = self.client.prepare(server=server, timeout=self.timeout)
        todo = itertools.count()
        lat, errors = [], []

        def worker():
            while next(todo) < calls:
                if time.monotonic() > self.deadline:
                    errors.append("benchmark deadline passed")
                    return
                t0 = time.perf_counter()
                try:
                    self.ping(cctxt)
                except Exception as e:  # noqa
                    errors.append(repr(e))
                    continue
                lat.append(time.perf_counter() - t0)

        start = time.perf_counter()
        if workers == 1:
            worker()
        else:
            threads = [threading.Thread(target=worker) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return time.perf_counter() - start, lat, errors


def client(args):
    setup("oslo-rpc-bench-client")
    targets = []
    for t in args.targets:
        label, sep, server = t.partition("=")
        if not sep or not label or not server:
            sys.exit("target %r: want LABEL=SERVER" % t)
        targets.append((label, server))
    b = Bench(args.timeout, args.deadline)
    failed = False
    for label, server in targets:
        _, _, errors = b.run(server, args.warmup, 1)
        _, _, errors2 = b.run(server, args.warmup, args.threads)
        if errors or errors2:
            print("warm-up against %s (%s) failed: %s" % (label, server, (errors + errors2)[:3]), file=sys.stderr)
            leave(1)
    for mode, calls, workers in (("seq", args.seq, 1), ("conc", args.conc, args.threads)):
        for label, server in targets:
            secs, lat, errors = b.run(server, calls, workers)
            lat.sort()
            print("RESULT client=oslo server=%s mode=%s workers=%d calls=%d errors=%d seconds=%.3f "
                  "calls_per_s=%.1f p50_ms=%.3f p99_ms=%.3f"
                  % (label, mode, workers, len(lat), len(errors), secs, len(lat) / secs,
                     percentile(lat, 500) * 1000, percentile(lat, 990) * 1000), flush=True)
            if errors:
                failed = True
                print("%s %s: %d errors, first: %s" % (label, mode, len(errors), errors[0]), file=sys.stderr)
    leave(1 if failed else 0)


def main():
    p = argparse.ArgumentParser(description="oslo.messaging side of bench/rpc-roundtrip.sh")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("name")
    c = sub.add_parser("client")
    c.add_argument("--seq", type=int, default=2000, help="sequential calls per server")
    c.add_argument("--conc", type=int, default=4000, help="concurrent calls per server")
    c.add_argument("--threads", type=int, default=16, help="threads for the concurrent run")
    c.add_argument("--warmup", type=int, default=200, help="warm-up calls per server (sequential, then threaded)")
    c.add_argument("--timeout", type=float, default=30, help="timeout of one call (s)")
    c.add_argument("--deadline", type=float, default=600, help="bound on the whole run (s)")
    c.add_argument("targets", nargs="+", metavar="LABEL=SERVER")
    args = p.parse_args()
    try:
        if args.cmd == "server":
            serve(args.name)
        else:
            client(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            leave(2)
        leave(e.code or 0)
    except BaseException:  # noqa
        import traceback
        traceback.print_exc()
        leave(1)


if __name__ == "__main__":
    main()
