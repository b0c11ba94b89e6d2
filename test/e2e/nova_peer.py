#!/usr/bin/python3
"""nova's own compute RPC client driving lxc-agent.

Uses python3-nova (Zed) exactly as nova-conductor and nova-api do:
nova.compute.rpcapi.ComputeAPI with [upgrade_levels] compute = zed and real
nova.objects. Usage:
  nova_peer.py CONF build UUID IMAGE NET PORT MAC IP/PREFIX GATEWAY MTU
  nova_peer.py CONF console UUID TAIL
  nova_peer.py CONF diagnostics UUID
  nova_peer.py CONF terminate UUID
"""
import json
import os
import sys

import nova.conf
from nova import config as nova_config
from nova import context as nova_context
from nova import objects
from nova.compute import rpcapi as compute_rpcapi
from nova.network import model as network_model

conf_file, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
nova_config.parse_args(["nova-peer", "--config-file", conf_file])
objects.register_all()
CONF = nova.conf.CONF
HOST = CONF.host
api = compute_rpcapi.ComputeAPI()
ctx = nova_context.RequestContext("e2e-user", "e2e-project", auth_token="e2e-token", roles=["member"])


def instance(uuid, power_state=1, nw=None):
    flavor = objects.Flavor(name="m1.tiny", flavorid="1", memory_mb=256, vcpus=1, root_gb=1,
                            ephemeral_gb=0, swap=0, extra_specs={})
    inst = objects.Instance(ctx, uuid=uuid, host=HOST, node=HOST, display_name="e2e server",
                            hostname="e2e-vm", vm_state="active", task_state=None,
                            power_state=power_state, memory_mb=256, vcpus=1, root_gb=1,
                            project_id="e2e-project", user_id="e2e-user", flavor=flavor,
                            system_metadata={}, metadata={})
    inst.info_cache = objects.InstanceInfoCache(instance_uuid=uuid, network_info=nw or network_model.NetworkInfo([]))
    return inst


if cmd == "build":
    uuid, image, net, port, mac, cidr_ip, gw, mtu = args
    ip, prefix = cidr_ip.split("/")
    import ipaddress
    cidr = str(ipaddress.ip_network(cidr_ip, strict=False))
    subnet = network_model.Subnet(cidr=cidr, gateway=network_model.IP(address=gw, type="gateway"),
                                  ips=[network_model.FixedIP(address=ip)], dns=[], routes=[])
    if os.environ.get("E2E_VIF_TYPE") == "ovs":
        # As neutron's OVS agent binds a port: the integration bridge, the
        # datapath the test's OVS needs, no hybrid plug.
        network = network_model.Network(id=net, bridge="br-int", label="private", subnets=[subnet],
                                        mtu=int(mtu), tenant_id="e2e-project")
        details = {"port_filter": True, "ovs_hybrid_plug": False, "connectivity": "l2"}
        if os.environ.get("E2E_OVS_DATAPATH"):
            details["datapath_type"] = os.environ["E2E_OVS_DATAPATH"]
        vif = network_model.VIF(id=port, address=mac, network=network, type="ovs",
                                devname=("tap" + port)[:14], details=details, ovs_interfaceid=port,
                                active=False, vnic_type="normal")
    else:
        network = network_model.Network(id=net, bridge="brq" + net[:11], label="private", subnets=[subnet],
                                        mtu=int(mtu), should_create_bridge=True, tenant_id="e2e-project")
        vif = network_model.VIF(id=port, address=mac, network=network, type="bridge",
                                devname=("tap" + port)[:14], details={"port_filter": True, "connectivity": "l2"},
                                active=False, vnic_type="normal")
    nw = network_model.NetworkInfo.hydrate([vif])
    inst = instance(uuid, power_state=0, nw=nw)
    inst.vm_state, inst.task_state, inst.image_ref = "building", "scheduling", image
    reqnets = objects.NetworkRequestList(objects=[objects.NetworkRequest(network_id=net, port_id=port)])
    image_meta = {"id": image, "name": "busybox", "status": "active", "disk_format": "raw",
                  "container_format": "bare", "min_ram": 0, "min_disk": 0, "properties": {}}
    api.build_and_run_instance(ctx, inst, HOST, image_meta, request_spec=None, filter_properties={},
                               admin_password=None, injected_files=[], requested_networks=reqnets,
                               security_groups=[], block_device_mapping=objects.BlockDeviceMappingList(objects=[]),
                               node=HOST, limits={}, host_list=None, accel_uuids=[])
    print("cast build_and_run_instance", uuid)
elif cmd == "console":
    uuid, tail = args
    out = api.get_console_output(ctx, instance(uuid), int(tail) if tail != "none" else None)
    assert isinstance(out, str), type(out)
    sys.stdout.write(out)
elif cmd == "diagnostics":
    (uuid,) = args
    d = api.get_instance_diagnostics(ctx, instance(uuid))
    assert isinstance(d, objects.Diagnostics), type(d)
    print(json.dumps({"state": d.state, "driver": d.driver, "hypervisor": d.hypervisor, "uptime": d.uptime,
                      "memory_max": d.memory_details.maximum, "memory_used": d.memory_details.used,
                      "num_cpus": d.num_cpus, "num_nics": d.num_nics,
                      "macs": [n.mac_address for n in d.nic_details]}))
elif cmd == "diagnostics-stopped":
    (uuid,) = args
    import nova.exception
    try:
        api.get_instance_diagnostics(ctx, instance(uuid, power_state=4))
    except nova.exception.InstanceInvalidState as e:
        print("InstanceInvalidState:", e)
    else:
        raise AssertionError("no InstanceInvalidState")
elif cmd == "snapshot":
    uuid, image_id = args
    api.snapshot_instance(ctx, instance(uuid), image_id)
    print("cast snapshot_instance", uuid, image_id)
elif cmd == "cache_images":
    print(json.dumps(api.cache_images(ctx, HOST, args)))
elif cmd in ("start", "stop", "stop-hard", "reboot-soft", "reboot-hard", "pause", "unpause", "suspend", "resume"):
    (uuid,) = args
    inst = instance(uuid)
    if cmd == "start":
        api.start_instance(ctx, inst)
    elif cmd == "stop":
        api.stop_instance(ctx, inst, clean_shutdown=True)
    elif cmd == "stop-hard":
        api.stop_instance(ctx, inst, clean_shutdown=False)
    elif cmd.startswith("reboot"):
        api.reboot_instance(ctx, inst, block_device_info=None, reboot_type=cmd.split("-")[1].upper())
    else:
        getattr(api, cmd + "_instance")(ctx, inst)
    print("cast", cmd, uuid)
elif cmd == "rebuild":
    uuid, image = args
    api.rebuild_instance(ctx, instance(uuid), new_pass=None, injected_files=[], image_ref=image, orig_image_ref=image,
                         orig_sys_metadata={}, bdms=objects.BlockDeviceMappingList(objects=[]), recreate=False,
                         on_shared_storage=False, host=HOST, node=HOST, preserve_ephemeral=False, migration=None,
                         limits={}, request_spec=None, accel_uuids=[], reimage_boot_volume=False)
    print("cast rebuild", uuid)
elif cmd == "set_admin_password":
    import nova.exception
    uuid, password = args
    try:
        api.set_admin_password(ctx, instance(uuid), password)
        print("password set")
    except nova.exception.InstancePasswordSetFailed as e:
        print("InstancePasswordSetFailed:", e)
elif cmd == "get_diagnostics":
    (uuid,) = args
    print(json.dumps(api.get_diagnostics(ctx, instance(uuid))))
elif cmd == "get_host_uptime":
    print(api.get_host_uptime(ctx, HOST))
elif cmd == "get_vnc_console":
    import nova.exception
    (uuid,) = args
    try:
        api.get_vnc_console(ctx, instance(uuid), "novnc")
    except nova.exception.ConsoleTypeUnavailable as e:
        print("ConsoleTypeUnavailable:", e)
elif cmd == "terminate":
    (uuid,) = args
    api.terminate_instance(ctx, instance(uuid), bdms=objects.BlockDeviceMappingList(objects=[]))
    print("cast terminate_instance", uuid)
else:
    raise SystemExit("unknown command " + cmd)

# oslo.messaging 14's metrics thread is not a daemon and keeps an exiting
# process alive for about ten seconds: flush and leave at once.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
