package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNovaConfOptions(t *testing.T) {
	nova := write(t, "nova.conf", `
# a real nova.conf carries many options the agent does not know
[DEFAULT]
host = compute1
state_path = /srv/nova
instances_path = $state_path/instances
transport_url = rabbit://nova:secret@10.0.0.1:5672,nova:secret@10.0.0.2:5672/
compute_driver = libvirt.LibvirtDriver
my_ip = 10.0.0.9

[glance]
api_servers = http://glance1:9292, http://glance2:9292

[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 30
ssl = True
amqp_durable_queues = yes

[libvirt]
virt_type = lxc
`)
	c, err := Load([]string{nova}, Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "compute1" || c.StatePath != "/srv/nova" || c.InstancesPath != "/srv/nova/instances" {
		t.Errorf("DEFAULT: %+v", c)
	}
	if c.Glance.Endpoint() != "http://glance1:9292" {
		t.Errorf("glance endpoint = %q", c.Glance.Endpoint())
	}
	if c.Rabbit.HeartbeatTimeout != 30*time.Second || !c.Rabbit.SSL || !c.Rabbit.DurableQueues {
		t.Errorf("rabbit: %+v", c.Rabbit)
	}
	// nova's [libvirt] virt_type = lxc selects the libvirt-lxc backend.
	if c.LXCAgent.ImageCacheDir != "/srv/nova/image-cache" || c.LXCAgent.Backend != "libvirt-lxc" || c.LXCAgent.LibvirtURI != "lxc:///" {
		t.Errorf("lxc_agent defaults: %+v", c.LXCAgent)
	}
}

func TestLaterFilesAndFlagsOverride(t *testing.T) {
	a := write(t, "a.conf", "[DEFAULT]\nhost = a\n[glance]\nendpoint_override = http://x:9292/\n[lxc_agent]\nmetrics_address = 0.0.0.0:1\n")
	b := write(t, "b.conf", "[DEFAULT]\nhost = b\n[LXC_AGENT]\nMetrics_Address = 127.0.0.1:2\n")
	c, err := Load([]string{a, b}, Flags{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "b" || c.LXCAgent.MetricsAddress != "127.0.0.1:2" || c.Glance.Endpoint() != "http://x:9292" {
		t.Errorf("got host %q metrics %q glance %q", c.Host, c.LXCAgent.MetricsAddress, c.Glance.Endpoint())
	}
	c, err = Load([]string{a, b}, Flags{Host: "flag", MetricsAddress: "127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "flag" || c.LXCAgent.MetricsAddress != "127.0.0.1:3" {
		t.Errorf("flags did not override: %q %q", c.Host, c.LXCAgent.MetricsAddress)
	}
}

func TestContinuationAndQuotes(t *testing.T) {
	ini := INI{}
	err := ini.Parse("x", strings.NewReader("[DEFAULT]\nfoo = \"quoted\"\nbar = one\n  two\n; comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := ini.Get("DEFAULT", "foo"); v != "quoted" {
		t.Errorf("foo = %q", v)
	}
	if v, _ := ini.Get("default", "BAR"); v != "one\ntwo" {
		t.Errorf("bar = %q", v)
	}
}

func TestMalformedNamesFileAndLine(t *testing.T) {
	cases := map[string]string{
		"noeq":    "[DEFAULT]\nhost = a\nthis line is wrong\n",
		"nosect":  "host = a\n",
		"badhead": "[DEFAULT\nhost = a\n",
	}
	for name, text := range cases {
		p := write(t, name+".conf", text)
		_, err := Load([]string{p}, Flags{})
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("%s: err = %v, want ErrSyntax", name, err)
			continue
		}
		if !strings.Contains(err.Error(), p+":") {
			t.Errorf("%s: error %q does not name the file and line", name, err)
		}
	}
	p := write(t, "badint.conf", "[DEFAULT]\nexecutor_thread_pool_size = many\n")
	if _, err := Load([]string{p}, Flags{}); !errors.Is(err, ErrSyntax) {
		t.Errorf("bad integer: %v", err)
	}
	if _, err := Load([]string{"/nonexistent/nova.conf"}, Flags{}); err == nil {
		t.Error("missing file accepted")
	}
}
