#!/usr/bin/python3
"""The Python peer of the RPC interop test.

It drives lxc-agent's Go RPC server with oslo.messaging's own RPCClient and
nova's own serializer, context and exceptions, and asserts what Python sees.
Usage: rpc_peer.py CHECK [CHECK...]   (env: AMQP_URL, HOST, HOST2)
"""
import os
import sys
import tempfile
import threading
import time
import uuid

import oslo_messaging as messaging

import nova.conf
import nova.exception
from nova import config as nova_config
from nova import context as nova_context
from nova import objects
from nova import rpc as nova_rpc
from nova.objects import base as nova_base

objects.register_all()

URL = os.environ["AMQP_URL"].replace("amqp://", "rabbit://", 1)
HOST = os.environ["HOST"]
HOST2 = os.environ.get("HOST2", "")

# Set up exactly as nova's services do: nova.conf, nova.rpc.init (which
# allows nova.exception to come back typed) and nova.rpc.get_client.
CONF = nova.conf.CONF
with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
    f.write("[DEFAULT]\ntransport_url = %s\n" % URL)
nova_config.parse_args(["rpc-peer", "--config-file", f.name])
os.unlink(f.name)
transport = nova_rpc.TRANSPORT
CTX = nova_context.RequestContext("user1", "project1", auth_token="TOKEN", roles=["member"], is_admin=False)


def client(server=HOST, **prepare):
    c = nova_rpc.get_client(messaging.Target(topic="compute", server=server, version="6.0"),
                            serializer=nova_base.NovaObjectSerializer())
    prepare.setdefault("timeout", 20)
    return c.prepare(**prepare)


def interop(server=HOST, **kw):
    return client(server, namespace="interop", version="1.0", **kw)


def expect(exc_class, fn):
    try:
        fn()
    except exc_class as e:
        return e
    except Exception as e:  # noqa
        raise AssertionError("expected %s, got %r" % (exc_class.__name__, e))
    raise AssertionError("expected %s, got no exception" % exc_class.__name__)


def check_ping():
    r = client(namespace="baseapi", version="1.0").call(CTX, "ping", arg="1.21 GigaWatts")
    assert r == {"service": "compute", "arg": "1.21 GigaWatts"}, r


def check_unknown_kwargs_tolerated():
    r = client(namespace="baseapi", version="1.1").call(CTX, "ping", arg="x", extra_kwarg_from_newer_nova=1)
    assert r["arg"] == "x", r


def check_not_found():
    inst = objects.Instance(uuid=str(uuid.uuid4()))
    e = expect(nova.exception.InstanceNotFound,
               lambda: client().call(CTX, "get_console_output", instance=inst, tail_length=5))
    assert inst.uuid in str(e), str(e)
    assert e.kwargs["instance_id"] == inst.uuid, e.kwargs
    assert e.code == 404


def check_invalid_state():
    inst = objects.Instance(uuid=str(uuid.uuid4()), power_state=4)
    e = expect(nova.exception.InstanceInvalidState,
               lambda: client().call(CTX, "get_instance_diagnostics", instance=inst))
    assert "power state shutdown" in str(e), str(e)
    assert e.kwargs["method"] == "get_diagnostics", e.kwargs


def check_unsupported_version():
    e = expect(messaging.RemoteError,
               lambda: client(version="5.0").call(CTX, "get_console_output",
                                                  instance=objects.Instance(uuid=str(uuid.uuid4())), tail_length=1))
    assert e.exc_type == "UnsupportedVersion", e.exc_type


def check_no_such_method():
    e = expect(messaging.RemoteError, lambda: client().call(CTX, "frobnicate_instance"))
    assert e.exc_type == "NoSuchMethod", e.exc_type


def check_heartbeat():
    # call_monitor_timeout=1 s: without heartbeat replies the call would fail
    # after about a second; the Go server keeps it alive for 3 s.
    start = time.time()
    r = interop(call_monitor_timeout=1, timeout=30).call(CTX, "sleep", seconds=3)
    assert r == "slept 3", r
    assert time.time() - start >= 2.9


def check_concurrent():
    n, results, errors = 16, [], []

    def one():
        try:
            results.append(interop().call(CTX, "sleep", seconds=1))
        except Exception as e:  # noqa
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(n)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - start
    assert not errors, errors
    assert len(results) == n
    assert took < 5, "16 one-second calls took %.1f s: not concurrent" % took


def check_cast():
    token = "cast-%s" % uuid.uuid4().hex
    interop().cast(CTX, "record", value=token)
    for _ in range(100):
        if token in interop().call(CTX, "recorded"):
            return
        time.sleep(0.05)
    raise AssertionError("cast never arrived")


def check_fanout():
    token = "fan-%s" % uuid.uuid4().hex
    c = nova_rpc.get_client(messaging.Target(topic="compute", namespace="interop", version="1.0"),
                            serializer=nova_base.NovaObjectSerializer())
    c.prepare(fanout=True).cast(CTX, "record", value=token)
    for host in (HOST, HOST2):
        for _ in range(100):
            if token in interop(server=host).call(CTX, "recorded"):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("fanout cast did not reach %s" % host)


def check_context():
    r = interop().call(CTX, "whoami")
    assert r == {"user_id": "user1", "project_id": "project1", "auth_token": "TOKEN",
                 "request_id": CTX.request_id}, r


def main():
    failed = 0
    for name in sys.argv[1:]:
        try:
            globals()["check_" + name]()
            print("PASS", name)
        except Exception as e:  # noqa
            failed += 1
            print("FAIL", name, repr(e))
    # oslo.messaging 14's metrics thread is not a daemon and keeps an exiting
    # process alive for about ten seconds: flush and leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    main()
