package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/internal/config"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// clientEnv is what every client command needs: a connection and a target.
type clientEnv struct {
	cfg    *config.Config
	client *rpc.Client
	target rpc.Target
}

func dialClient(ctx context.Context, files []string, flags config.Flags, anyHost bool) (*clientEnv, error) {
	cfg, err := config.Load(files, flags)
	if err != nil {
		return nil, err
	}
	tc, err := transport(cfg)
	if err != nil {
		return nil, err
	}
	c, err := rpc.Dial(ctx, tc, cfg.ControlExchange, nil)
	if err != nil {
		return nil, err
	}
	t := rpc.Target{Topic: "compute", Server: cfg.Host, Version: "6.0"}
	if anyHost {
		t.Server = ""
	}
	return &clientEnv{cfg: cfg, client: c, target: t}, nil
}

func instanceRef(id string) *novaobj.Object {
	o := novaobj.New("Instance", "2.7")
	o.Set("uuid", id)
	return o
}

// netSpec is one --net value: NETWORK_ID[,ip=ADDR/LEN][,gw=ADDR][,mac=MAC][,port=ID][,mtu=N].
type netSpec struct {
	network, port, mac, gw string
	ip                     netip.Prefix
	mtu                    int
}

func parseNet(s string) (netSpec, error) {
	parts := strings.Split(s, ",")
	n := netSpec{network: parts[0]}
	if n.network == "" {
		return n, fmt.Errorf("--net %q: no network id", s)
	}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return n, fmt.Errorf("--net %q: %q is not key=value", s, p)
		}
		var err error
		switch k {
		case "ip":
			if !strings.Contains(v, "/") {
				v += "/24"
			}
			n.ip, err = netip.ParsePrefix(v)
		case "gw":
			_, err = netip.ParseAddr(v)
			n.gw = v
		case "mac":
			n.mac = v
		case "port":
			n.port = v
		case "mtu":
			n.mtu, err = strconv.Atoi(v)
		default:
			err = fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return n, fmt.Errorf("--net %q: %w", s, err)
		}
	}
	if n.port == "" {
		n.port = uuid.NewString()
	}
	if n.mac == "" {
		n.mac = fmt.Sprintf("fa:16:3e:%02x:%02x:%02x", n.port[0], n.port[1], n.port[2])
	}
	return n, nil
}

// vif renders the spec in nova's network model.
func (n netSpec) vif() novaobj.VIF {
	net := novaobj.Network{ID: n.network, Bridge: compute.BridgeName(n.network), Label: n.network,
		Subnets: []novaobj.Subnet{}, Meta: map[string]any{"should_create_bridge": true}}
	if n.mtu > 0 {
		net.Meta["mtu"] = n.mtu
	}
	if n.ip.IsValid() {
		ver := 4
		if n.ip.Addr().Is6() {
			ver = 6
		}
		sn := novaobj.Subnet{CIDR: n.ip.Masked().String(), Version: ver, DNS: []novaobj.IP{}, Routes: []novaobj.Route{},
			Meta: map[string]any{},
			IPs:  []novaobj.FixedIP{{IP: novaobj.IP{Address: n.ip.Addr().String(), Type: "fixed", Version: ver, Meta: map[string]any{}}, FloatingIPs: []novaobj.IP{}}}}
		if n.gw != "" {
			sn.Gateway = &novaobj.IP{Address: n.gw, Type: "gateway", Version: ver, Meta: map[string]any{}}
		}
		net.Subnets = append(net.Subnets, sn)
	}
	return novaobj.VIF{ID: n.port, Address: n.mac, Network: net, Type: "bridge", Devname: compute.TapName(n.port),
		Details: map[string]any{}, Profile: map[string]any{}, Meta: map[string]any{}, VNICType: "normal", Active: true}
}

func boot(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("boot", flag.ContinueOnError)
	files, flags := configFlags(fs)
	image := fs.String("image", "", "image id (Glance id, or a file name in the agent's local image directory)")
	name := fs.String("name", "", "instance name")
	mem := fs.Int("memory", 256, "memory in MB")
	vcpus := fs.Int("vcpus", 1, "vCPUs")
	anyHost := fs.Bool("any-host", false, "cast to topic compute: any agent takes it (the host flag is ignored)")
	wait := fs.Duration("wait", 0, "wait up to this long for the instance to be active")
	var nets stringList
	fs.Var(&nets, "net", "NETWORK_ID[,ip=ADDR/LEN][,gw=ADDR][,mac=MAC][,port=ID][,mtu=N] (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *image == "" {
		return fmt.Errorf("boot: --image is required")
	}
	env, err := dialClient(ctx, *files, *flags, *anyHost)
	if err != nil {
		return err
	}
	defer env.client.Close()
	id := uuid.NewString()
	if *name == "" {
		*name = "server-" + id[:8]
	}
	var nw novaobj.NetworkInfo
	for _, s := range nets {
		n, err := parseNet(s)
		if err != nil {
			return err
		}
		nw = append(nw, n.vif())
	}
	if nw == nil {
		nw = novaobj.NetworkInfo{}
	}
	nwJSON, _ := json.Marshal(nw)
	flavor := novaobj.New("Flavor", "1.2")
	flavor.Set("name", fmt.Sprintf("m%d.c%d", *mem, *vcpus))
	flavor.Set("flavorid", fmt.Sprintf("m%d.c%d", *mem, *vcpus))
	flavor.Set("memory_mb", *mem)
	flavor.Set("vcpus", *vcpus)
	flavor.Set("root_gb", 0)
	flavor.Set("ephemeral_gb", 0)
	flavor.Set("swap", 0)
	flavor.Set("extra_specs", map[string]string{})
	ic := novaobj.New("InstanceInfoCache", "1.5")
	ic.Set("instance_uuid", id)
	ic.Set("network_info", string(nwJSON))
	inst := novaobj.New("Instance", "2.7")
	for k, v := range map[string]any{
		"uuid": id, "display_name": *name, "hostname": *name, "host": env.target.Server, "node": env.target.Server,
		"image_ref": *image, "vm_state": "building", "task_state": "scheduling", "power_state": 0,
		"memory_mb": *mem, "vcpus": *vcpus, "root_gb": 0, "flavor": flavor, "info_cache": ic,
		"system_metadata": map[string]string{}, "metadata": map[string]string{},
	} {
		inst.Set(k, v)
	}
	reqNets := novaobj.New("NetworkRequestList", "1.1")
	reqNets.Set("objects", []any{})
	err = env.client.Cast(ctx, env.target, "build_and_run_instance", map[string]any{
		"instance": inst, "image": map[string]any{"id": *image, "disk_format": "raw", "container_format": "bare", "properties": map[string]any{}},
		"request_spec": nil, "filter_properties": map[string]any{}, "admin_password": nil, "injected_files": []any{},
		"requested_networks": reqNets, "security_groups": []any{}, "block_device_mapping": nil,
		"node": env.target.Server, "limits": map[string]any{}, "host_list": nil, "accel_uuids": []any{},
	}, nil)
	if err != nil {
		return err
	}
	fmt.Println(id)
	if *wait > 0 && env.target.Server != "" {
		deadline := time.Now().Add(*wait)
		for time.Now().Before(deadline) {
			rows, err := listRows(ctx, env)
			if err != nil {
				return err
			}
			for _, r := range rows {
				if r.UUID != id {
					continue
				}
				switch r.VMState {
				case compute.StateActive:
					fmt.Fprintf(os.Stderr, "%s: %s, %s\n", id, r.VMState, r.PowerState)
					return nil
				case compute.StateError:
					return fmt.Errorf("build of %s failed: %s", id, r.Fault)
				}
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		return fmt.Errorf("%s not active after %s", id, *wait)
	}
	return nil
}

func deleteCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("delete", flag.ContinueOnError)
	files, flags := configFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("delete: give one or more instance uuids")
	}
	env, err := dialClient(ctx, *files, *flags, false)
	if err != nil {
		return err
	}
	defer env.client.Close()
	for _, id := range fs.Args() {
		if err := env.client.Cast(ctx, env.target, "terminate_instance",
			map[string]any{"instance": instanceRef(id), "bdms": nil}, nil); err != nil {
			return err
		}
	}
	return nil
}

func listRows(ctx context.Context, env *clientEnv) ([]compute.InstanceSummary, error) {
	t := env.target
	t.Namespace, t.Version = "lxc_agent", "1.0"
	res, err := env.client.Call(ctx, t, "list_instances", nil, nil, env.cfg.RPCTimeout)
	if err != nil {
		return nil, err
	}
	var rows []compute.InstanceSummary
	if err := json.Unmarshal(res, &rows); err != nil {
		return nil, fmt.Errorf("list_instances reply: %w", err)
	}
	return rows, nil
}

func list(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	files, flags := configFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := dialClient(ctx, *files, *flags, false)
	if err != nil {
		return err
	}
	defer env.client.Close()
	rows, err := listRows(ctx, env)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UUID\tNAME\tVM STATE\tPOWER\tIMAGE\tNETWORKS")
	for _, r := range rows {
		var nets []string
		for _, v := range r.VIFs {
			nets = append(nets, fmt.Sprintf("%s %s %s", v.Tap, v.MAC, strings.Join(v.Addrs, " ")))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.UUID, r.Name, r.VMState, r.PowerState, r.ImageID, strings.Join(nets, "; "))
	}
	return tw.Flush()
}

func console(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("console", flag.ContinueOnError)
	files, flags := configFlags(fs)
	lines := fs.Int("lines", -1, "only the last N lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("console: give one instance uuid")
	}
	env, err := dialClient(ctx, *files, *flags, false)
	if err != nil {
		return err
	}
	defer env.client.Close()
	a := map[string]any{"instance": instanceRef(fs.Arg(0)), "tail_length": nil}
	if *lines >= 0 {
		a["tail_length"] = *lines
	}
	res, err := env.client.Call(ctx, env.target, "get_console_output", a, nil, env.cfg.RPCTimeout)
	if err != nil {
		return err
	}
	var out string
	if err := json.Unmarshal(res, &out); err != nil {
		return err
	}
	fmt.Print(out)
	return nil
}

func ping(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	files, flags := configFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := dialClient(ctx, *files, *flags, false)
	if err != nil {
		return err
	}
	defer env.client.Close()
	t := env.target
	t.Namespace, t.Version = "baseapi", "1.0"
	start := time.Now()
	res, err := env.client.Call(ctx, t, "ping", map[string]any{"arg": "1.21 GigaWatts"}, nil, env.cfg.RPCTimeout)
	if err != nil {
		return err
	}
	fmt.Printf("%s (%s)\n", res, time.Since(start).Round(time.Microsecond))
	return nil
}
