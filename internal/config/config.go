package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
)

// Config is everything the agent reads at start.
type Config struct {
	// [DEFAULT]
	Host            string
	StatePath       string
	InstancesPath   string
	TransportURL    string
	ControlExchange string
	ExecutorThreads int           // executor_thread_pool_size
	ShutdownTimeout time.Duration // shutdown_timeout: grace before a container is killed
	RPCTimeout      time.Duration // rpc_response_timeout (client side)
	// ResumeGuests is resume_guests_state_on_host_boot: start instances that
	// were running before the host rebooted.
	ResumeGuests bool
	// MyIP is my_ip, the ComputeNode's host_ip.
	MyIP string

	// Nova-compute's resource and liveness options.
	ReportInterval     time.Duration // report_interval
	ResourceInterval   time.Duration // update_resources_interval (0 = 60 s)
	SyncPowerInterval  time.Duration // sync_power_state_interval (< 0 disables)
	ReservedHostCPUs   int           // reserved_host_cpus
	ReservedHostMemMB  int           // reserved_host_memory_mb
	ReservedHostDiskMB int           // reserved_host_disk_mb
	// Allocation ratios; 0 = unset (nova's None).
	CPUAllocationRatio, RAMAllocationRatio, DiskAllocationRatio                      float64
	InitialCPUAllocationRatio, InitialRAMAllocationRatio, InitialDiskAllocationRatio float64

	// Placement is the [placement] section's keystoneauth options.
	Placement Auth
	// Neutron is the [neutron] section's: ports are made and bound through
	// Neutron when it is configured (nova mode only).
	Neutron Auth
	// OVS is os-vif's [os_vif_ovs] section: how to reach OVSDB.
	OVS OVS
	// Notifications is [oslo_messaging_notifications] and [notifications].
	Notifications Notifications

	Glance   Glance
	Rabbit   Rabbit
	LXCAgent LXCAgent
}

// OVS is [os_vif_ovs] as os-vif reads it from nova.conf.
type OVS struct {
	// Connection is ovsdb_connection ("tcp:127.0.0.1:6640",
	// "unix:/run/openvswitch/db.sock"); "" = ovs-vsctl's default.
	Connection string
	// Timeout is ovs_vsctl_timeout (120 s).
	Timeout time.Duration
}

// Notifications are nova's notification options.
type Notifications struct {
	Driver          []string // [oslo_messaging_notifications] driver
	Topics          []string // [oslo_messaging_notifications] topics
	TransportURL    string   // [oslo_messaging_notifications] transport_url
	Format          string   // [notifications] notification_format
	VersionedTopics []string // [notifications] versioned_notifications_topics
}

// Auth is a keystoneauth section ([placement], [neutron], [glance]) with
// nova's option names.
type Auth struct {
	AuthType          string // auth_type: password, v3password, admin_token, none
	AuthURL           string
	Username          string
	UserID            string
	Password          string
	ProjectName       string
	ProjectID         string
	UserDomainName    string
	UserDomainID      string
	ProjectDomainName string
	ProjectDomainID   string
	RegionName        string
	ValidInterfaces   []string
	EndpointOverride  string
	Endpoint          string // admin_token's endpoint
	Token             string // admin_token's token
	Insecure          bool
	CAFile            string
	Timeout           time.Duration
}

// Configured reports whether the section names any way to reach the service.
func (a Auth) Configured() bool {
	return a.AuthType != "" || a.EndpointOverride != "" || a.Endpoint != ""
}

func (r *reader) auth(section string) Auth {
	return Auth{
		AuthType: r.str(section, "auth_type", r.str(section, "auth_plugin", "")), AuthURL: r.str(section, "auth_url", ""),
		Username: r.str(section, "username", ""), UserID: r.str(section, "user_id", ""),
		Password: r.str(section, "password", ""), ProjectName: r.str(section, "project_name", r.str(section, "tenant_name", "")),
		ProjectID: r.str(section, "project_id", ""), UserDomainName: r.str(section, "user_domain_name", ""),
		UserDomainID: r.str(section, "user_domain_id", ""), ProjectDomainName: r.str(section, "project_domain_name", ""),
		ProjectDomainID: r.str(section, "project_domain_id", ""), RegionName: r.str(section, "region_name", ""),
		ValidInterfaces: r.list(section, "valid_interfaces"), EndpointOverride: r.str(section, "endpoint_override", ""),
		Endpoint: r.str(section, "endpoint", ""), Token: r.str(section, "token", ""),
		Insecure: r.bool(section, "insecure", false), CAFile: r.str(section, "cafile", ""),
		Timeout: r.seconds(section, "timeout", 0),
	}
}

func (r *reader) float(section, option string, def float64) float64 {
	v, ok := r.ini.Get(section, option)
	if !ok || v == "" || strings.EqualFold(v, "none") {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		r.fail(section, option, v, "a number")
		return def
	}
	return f
}

// Glance is the [glance] section.
type Glance struct {
	// Auth is the section's keystoneauth options: with an auth_type and
	// neither endpoint_override nor api_servers, Glance's endpoint comes
	// from the Keystone catalog (service type "image").
	Auth             Auth
	EndpointOverride string
	APIServers       []string
}

// Endpoint is the Glance URL to use, "" when none is configured.
func (g Glance) Endpoint() string {
	if g.EndpointOverride != "" {
		return strings.TrimRight(g.EndpointOverride, "/")
	}
	if len(g.APIServers) > 0 {
		return strings.TrimRight(g.APIServers[0], "/")
	}
	return ""
}

// Rabbit is [oslo_messaging_rabbit].
type Rabbit struct {
	HeartbeatTimeout time.Duration // heartbeat_timeout_threshold
	HeartbeatRate    int
	SSL              bool
	SSLCAFile        string
	SSLCertFile      string
	SSLKeyFile       string
	DurableQueues    bool // amqp_durable_queues
	AutoDelete       bool // amqp_auto_delete
}

// LXCAgent is the [lxc_agent] section: what nova-compute has no option for.
type LXCAgent struct {
	Backend        string // "lxc" (go-lxc) or "libvirt-lxc"
	LibvirtURI     string // [libvirt] connection_uri
	ImageDir       string // local image directory used when no Glance is configured
	ImageCacheDir  string
	LXCPath        string
	MetricsAddress string // "" disables /metrics
	DefaultMTU     int
	DefaultPrefix  int    // prefix length for standalone fixed IPs
	DefaultGateway string // gateway for standalone fixed IPs, "" = none
	JournalDir     string
	SnapshotFormat string // "root-tar" (default) or "raw" (ext4)
	// ImageCacheBudgetMB bounds the image cache (0 = unlimited); unused
	// images are evicted least recently used first.
	ImageCacheBudgetMB int
	// ImageCacheMinFreeMB is free space a download must leave on the cache's
	// filesystem.
	ImageCacheMinFreeMB int
	// PidsLimit and SwapMB are every container's defaults (0 = none).
	PidsLimit int
	SwapMB    int
	// Mode is "nova" (join nova: conductor, placement), "standalone" (RPC
	// only), or "auto" (nova when [placement] is configured).
	Mode string
	// Node is the compute node's hypervisor_hostname (the host by default).
	Node string
	// IDMaps are [libvirt] uid_maps and gid_maps: every new container runs
	// unprivileged with them; nil = privileged.
	IDMaps []driver.IDMap
}

// JoinsNova reports whether the agent registers with nova's control plane.
func (c *Config) JoinsNova() bool {
	switch c.LXCAgent.Mode {
	case "nova":
		return true
	case "standalone":
		return false
	}
	return c.Placement.Configured()
}

// Flags are command-line values that override the files; empty = unset.
type Flags struct {
	Host, StatePath, InstancesPath, TransportURL, Backend, ImageDir, MetricsAddress, GlanceEndpoint string
}

// Load reads the files in order (later wins), applies defaults and flags.
func Load(files []string, flags Flags) (*Config, error) {
	ini := INI{}
	for _, f := range files {
		if err := ini.ParseFile(f); err != nil {
			return nil, err
		}
	}
	return FromINI(ini, flags)
}

// FromINI builds a Config from parsed options.
func FromINI(ini INI, flags Flags) (*Config, error) {
	r := reader{ini: ini}
	hostname, _ := os.Hostname()
	c := &Config{}
	c.Host = pick(flags.Host, r.str("DEFAULT", "host", hostname))
	c.StatePath = pick(flags.StatePath, r.str("DEFAULT", "state_path", "/var/lib/lxc-agent"))
	r.vars = map[string]string{"state_path": c.StatePath, "host": c.Host}
	c.InstancesPath = pick(flags.InstancesPath, r.str("DEFAULT", "instances_path", filepath.Join(c.StatePath, "instances")))
	c.TransportURL = pick(flags.TransportURL, r.str("DEFAULT", "transport_url", "rabbit://guest:guest@127.0.0.1:5672/"))
	c.ControlExchange = r.str("DEFAULT", "control_exchange", "nova")
	c.ExecutorThreads = r.int("DEFAULT", "executor_thread_pool_size", 64)
	c.ShutdownTimeout = r.seconds("DEFAULT", "shutdown_timeout", 60)
	c.RPCTimeout = r.seconds("DEFAULT", "rpc_response_timeout", 60)
	c.ResumeGuests = r.bool("DEFAULT", "resume_guests_state_on_host_boot", false)
	c.MyIP = r.str("DEFAULT", "my_ip", "")
	c.ReportInterval = r.seconds("DEFAULT", "report_interval", 10)
	c.ResourceInterval = r.seconds("DEFAULT", "update_resources_interval", 0)
	c.SyncPowerInterval = r.seconds("DEFAULT", "sync_power_state_interval", 600)
	c.ReservedHostCPUs = r.int("DEFAULT", "reserved_host_cpus", 0)
	c.ReservedHostMemMB = r.int("DEFAULT", "reserved_host_memory_mb", 512)
	c.ReservedHostDiskMB = r.int("DEFAULT", "reserved_host_disk_mb", 0)
	c.CPUAllocationRatio = r.float("DEFAULT", "cpu_allocation_ratio", 0)
	c.RAMAllocationRatio = r.float("DEFAULT", "ram_allocation_ratio", 0)
	c.DiskAllocationRatio = r.float("DEFAULT", "disk_allocation_ratio", 0)
	c.InitialCPUAllocationRatio = r.float("DEFAULT", "initial_cpu_allocation_ratio", 16.0)
	c.InitialRAMAllocationRatio = r.float("DEFAULT", "initial_ram_allocation_ratio", 1.5)
	c.InitialDiskAllocationRatio = r.float("DEFAULT", "initial_disk_allocation_ratio", 1.0)
	c.Placement = r.auth("placement")
	c.OVS = OVS{Connection: r.str("os_vif_ovs", "ovsdb_connection", ""), Timeout: r.seconds("os_vif_ovs", "ovs_vsctl_timeout", 120)}
	c.Neutron = r.auth("neutron")
	c.Notifications = Notifications{
		Driver: r.list("oslo_messaging_notifications", "driver"), Topics: r.list("oslo_messaging_notifications", "topics"),
		TransportURL:    r.str("oslo_messaging_notifications", "transport_url", ""),
		Format:          r.str("notifications", "notification_format", "unversioned"),
		VersionedTopics: r.list("notifications", "versioned_notifications_topics"),
	}

	c.Glance.EndpointOverride = pick(flags.GlanceEndpoint, r.str("glance", "endpoint_override", ""))
	c.Glance.APIServers = r.list("glance", "api_servers")
	c.Glance.Auth = r.auth("glance")

	c.Rabbit.HeartbeatTimeout = r.seconds("oslo_messaging_rabbit", "heartbeat_timeout_threshold", 60)
	c.Rabbit.HeartbeatRate = r.int("oslo_messaging_rabbit", "heartbeat_rate", 2)
	c.Rabbit.SSL = r.bool("oslo_messaging_rabbit", "ssl", false)
	c.Rabbit.SSLCAFile = r.str("oslo_messaging_rabbit", "ssl_ca_file", "")
	c.Rabbit.SSLCertFile = r.str("oslo_messaging_rabbit", "ssl_cert_file", "")
	c.Rabbit.SSLKeyFile = r.str("oslo_messaging_rabbit", "ssl_key_file", "")
	c.Rabbit.DurableQueues = r.bool("oslo_messaging_rabbit", "amqp_durable_queues", false)
	c.Rabbit.AutoDelete = r.bool("oslo_messaging_rabbit", "amqp_auto_delete", false)

	a := &c.LXCAgent
	// [lxc_agent] backend wins; a nova.conf with [libvirt] virt_type = lxc
	// selects libvirt-lxc, as it does for nova-compute.
	defBackend := "lxc"
	if vt, _ := ini.Get("libvirt", "virt_type"); vt == "lxc" {
		defBackend = "libvirt-lxc"
	}
	a.Backend = pick(flags.Backend, r.str("lxc_agent", "backend", defBackend))
	a.LibvirtURI = r.str("libvirt", "connection_uri", "lxc:///")
	a.IDMaps = r.idmaps()
	a.ImageDir = pick(flags.ImageDir, r.str("lxc_agent", "image_dir", filepath.Join(c.StatePath, "images")))
	a.ImageCacheDir = r.str("lxc_agent", "image_cache_dir", filepath.Join(c.StatePath, "image-cache"))
	a.LXCPath = r.str("lxc_agent", "lxc_path", filepath.Join(c.StatePath, "lxc"))
	a.MetricsAddress = pick(flags.MetricsAddress, r.str("lxc_agent", "metrics_address", "127.0.0.1:9180"))
	a.DefaultMTU = r.int("lxc_agent", "default_mtu", 1500)
	a.DefaultPrefix = r.int("lxc_agent", "default_prefix_length", 24)
	a.DefaultGateway = r.str("lxc_agent", "default_gateway", "")
	a.JournalDir = r.str("lxc_agent", "journal_dir", filepath.Join(c.StatePath, "rpc-journal"))
	a.SnapshotFormat = r.str("lxc_agent", "snapshot_format", "root-tar")
	a.ImageCacheBudgetMB = r.int("lxc_agent", "image_cache_budget_mb", 0)
	a.ImageCacheMinFreeMB = r.int("lxc_agent", "image_cache_min_free_mb", 1024)
	a.PidsLimit = r.int("lxc_agent", "pids_limit", 0)
	a.SwapMB = r.int("lxc_agent", "swap_mb", 0)
	a.Mode = r.str("lxc_agent", "mode", "auto")
	a.Node = r.str("lxc_agent", "node", c.Host)
	if a.Mode != "auto" && a.Mode != "nova" && a.Mode != "standalone" {
		r.fail("lxc_agent", "mode", a.Mode, "auto, nova or standalone")
	}
	if a.SnapshotFormat != "root-tar" && a.SnapshotFormat != "raw" {
		r.fail("lxc_agent", "snapshot_format", a.SnapshotFormat, "root-tar or raw")
	}

	if r.err != nil {
		return nil, r.err
	}
	if a.Backend != "lxc" && a.Backend != "libvirt-lxc" {
		return nil, fmt.Errorf("[lxc_agent] backend = %q: want lxc (go-lxc) or libvirt-lxc", a.Backend)
	}
	if c.Host == "" {
		return nil, fmt.Errorf("[DEFAULT] host is empty and the host name is unknown")
	}
	return c, nil
}

func pick(flag, v string) string {
	if flag != "" {
		return flag
	}
	return v
}

type reader struct {
	ini  INI
	vars map[string]string
	err  error
}

// str returns the option with oslo's $var / ${var} substitution.
func (r *reader) str(section, option, def string) string {
	v, ok := r.ini.Get(section, option)
	if !ok {
		return def
	}
	return r.expand(v)
}

func (r *reader) expand(v string) string {
	if !strings.Contains(v, "$") {
		return v
	}
	return os.Expand(strings.ReplaceAll(v, "$$", "\x00"), func(name string) string {
		if val, ok := r.vars[name]; ok {
			return val
		}
		if val, ok := r.ini.Get("DEFAULT", name); ok {
			return val
		}
		return ""
	})
}

func (r *reader) fail(section, option, v, want string) {
	if r.err == nil {
		r.err = fmt.Errorf("[%s] %s = %q: %w: want %s", section, option, v, ErrSyntax, want)
	}
}

func (r *reader) int(section, option string, def int) int {
	v, ok := r.ini.Get(section, option)
	if !ok || v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(section, option, v, "an integer")
		return def
	}
	return n
}

func (r *reader) seconds(section, option string, def int) time.Duration {
	return time.Duration(r.int(section, option, def)) * time.Second
}

func (r *reader) bool(section, option string, def bool) bool {
	v, ok := r.ini.Get(section, option)
	if !ok || v == "" {
		return def
	}
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1":
		return true
	case "false", "no", "off", "0":
		return false
	}
	r.fail(section, option, v, "a boolean")
	return def
}

func (r *reader) list(section, option string) []string {
	v, ok := r.ini.Get(section, option)
	if !ok {
		return nil
	}
	var out []string
	for _, s := range strings.Split(r.expand(v), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
