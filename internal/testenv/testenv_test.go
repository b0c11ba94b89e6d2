package testenv

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

func dialAMQP(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return c
}

// roundTrip publishes body to queue q (declared durable) and reads it back
// with basic.get when get is true.
func publish(t *testing.T, c *amqp.Connection, q, body string) {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false,
		amqp.Publishing{Body: []byte(body), DeliveryMode: amqp.Persistent})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish confirm: ack=%v err=%v", ok, err)
	}
}

func get(t *testing.T, c *amqp.Connection, q string) string {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	m, ok, err := ch.Get(q, true)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("queue %s is empty", q)
	}
	return string(m.Body)
}

func TestRabbitMQURLFromEnv(t *testing.T) {
	t.Setenv(EnvAMQPURL, "amqp://u:p@127.0.0.1:1/")
	if got := RabbitMQ(t); got != "amqp://u:p@127.0.0.1:1/" {
		t.Fatalf("RabbitMQ(t) = %q, want the env var", got)
	}
}

func TestRabbitMQ(t *testing.T) {
	RequireRoot(t)
	t.Parallel()

	// Two nodes at once: each has its own epmd, node name and ports.
	var (
		wg     sync.WaitGroup
		rs     [2]*Rabbit
		errs   [2]error
		starts [2]time.Duration
	)
	for i := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			rs[i], errs[i] = StartRabbitMQ(context.Background(), t.TempDir(), 0)
			starts[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	for i, r := range rs {
		if r != nil {
			t.Cleanup(func() {
				tree := r.node.tree()
				if err := r.Stop(); err != nil {
					t.Errorf("stop: %v", err)
				}
				if left := tree.alive(); len(left) > 0 {
					t.Errorf("processes left after Stop: %v", left)
				}
				if portOpen(r.Port) || portOpen(r.EpmdPort) || portOpen(r.DistPort) {
					t.Errorf("ports still open after Stop")
				}
			})
		}
		if errs[i] != nil {
			t.Fatalf("start rabbit %d: %v", i, errs[i])
		}
		t.Logf("rabbit %d: %s node %s amqp %d dist %d epmd %d, ready in %.1fs",
			i, r.URL(), r.Node, r.Port, r.DistPort, r.EpmdPort, starts[i].Seconds())
	}
	if rs[0].EpmdPort == rs[1].EpmdPort || rs[0].Port == rs[1].Port {
		t.Fatalf("nodes share ports")
	}

	r := rs[0]
	c := dialAMQP(t, r.URL())
	publish(t, c, "q1", "before restart")
	closed := c.NotifyClose(make(chan *amqp.Error, 1))

	// Restart: graceful stop, same ports and data dir.
	t0 := time.Now()
	if err := r.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("Restart (stop + start) took %.1fs", time.Since(t0).Seconds())
	select {
	case e := <-closed:
		t.Logf("client saw close: %v", e)
	case <-time.After(5 * time.Second):
		t.Fatal("client connection not closed by restart")
	}
	c = dialAMQP(t, r.URL())
	if got := get(t, c, "q1"); got != "before restart" {
		t.Fatalf("after restart got %q", got)
	}
	publish(t, c, "q1", "before kill")
	closed = c.NotifyClose(make(chan *amqp.Error, 1))

	// KillNode: abrupt, then StartNode again.
	if err := r.KillNode(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-closed:
		t.Logf("client saw close after kill: %v", e)
	case <-time.After(5 * time.Second):
		t.Fatal("client connection not closed by kill")
	}
	if _, err := amqp.Dial(r.URL()); err == nil {
		t.Fatal("dial succeeded while the node is down")
	}
	t0 = time.Now()
	if err := r.StartNode(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("StartNode after kill took %.1fs", time.Since(t0).Seconds())
	c = dialAMQP(t, r.URL())
	defer c.Close()
	if got := get(t, c, "q1"); got != "before kill" {
		t.Fatalf("after kill+start got %q", got)
	}

	// The second node is independent of all that.
	c2 := dialAMQP(t, rs[1].URL())
	publish(t, c2, "q2", "x")
	if got := get(t, c2, "q2"); got != "x" {
		t.Fatalf("node 2 got %q", got)
	}
	c2.Close()
}

func TestGlance(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	t0 := time.Now()
	g := Glance(t)
	t.Logf("Glance(t) took %.1fs", time.Since(t0).Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	img := filepath.Join(dir, "busybox.ext4")
	BusyboxRootfs(t, rootfs, "")
	MakeExt4Image(t, rootfs, img, 16)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := g.CreateImage(ctx, "busybox", "raw", "bare", f)
	if err != nil {
		t.Fatal(err)
	}
	im, err := g.GetImage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sum := md5.Sum(data)
	if im.Status != "active" || im.Size != int64(len(data)) || im.DiskFormat != "raw" ||
		im.ContainerFormat != "bare" || im.Checksum != hex.EncodeToString(sum[:]) {
		t.Fatalf("image %+v, want active raw/bare of %d bytes md5 %x", im, len(data), sum)
	}
	t.Logf("image %s visibility %s", id, im.Visibility)

	// Plain HTTP, no token: the unauthenticated-context pipeline.
	resp, err := http.Get(g.URL() + "/v2/images/" + id + "/file")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("download: %v %s, %d bytes (want %d)", err, resp.Status, buf.Len(), len(data))
	}

	// Chunked upload (length unknown) with another disk format.
	tarball := filepath.Join(dir, "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	tb, _ := os.ReadFile(tarball)
	id2, err := g.CreateImage(ctx, "busybox-tar", "root-tar", "bare", struct{ *bytes.Reader }{bytes.NewReader(tb)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.DownloadImage(ctx, id2)
	if err != nil || !bytes.Equal(got, tb) {
		t.Fatalf("root-tar download: %v, %d bytes (want %d)", err, len(got), len(tb))
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		q := filepath.Join(dir, "x.qcow2")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", q, "64M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
		qf, _ := os.Open(q)
		defer qf.Close()
		if _, err := g.CreateImage(ctx, "qcow2", "qcow2", "bare", qf); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.DeleteImage(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetImage(ctx, id2); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("get deleted image: %v", err)
	}

	tree := g.proc.tree()
	if len(tree) < 2 {
		t.Errorf("expected glance-api parent and 1 worker, got pids %v", tree)
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if left := tree.alive(); len(left) > 0 {
		t.Fatalf("processes left after Stop: %v", left)
	}
	if portOpen(g.Port) {
		t.Fatalf("port %d still open after Stop", g.Port)
	}
	if err := g.Stop(); err != nil { // Cleanup stops again: must be harmless
		t.Fatal(err)
	}
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

func TestBusyboxExt4Image(t *testing.T) {
	RequireRoot(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	img := filepath.Join(dir, "root.ext4")
	BusyboxRootfs(t, rootfs, "")
	// A second call on the same dir must work (symlinks replaced).
	BusyboxRootfs(t, rootfs, "::sysinit:/bin/echo custom > /dev/console\n")
	BusyboxRootfs(t, rootfs, "")

	// The rootfs works: a shell with the applets the tests use.
	out, err := exec.Command("chroot", rootfs, "/bin/sh", "-c",
		"echo ok; hostname >/dev/null; ip -V >/dev/null 2>&1 || ip link >/dev/null; cat /etc/passwd; sleep 0; ls /sbin/init; mount -h 2>&1 | head -1; ifconfig -a >/dev/null").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok\nroot:x:0:0:") {
		t.Fatalf("chroot sh: %v\n%s", err, out)
	}

	t0 := time.Now()
	MakeExt4Image(t, rootfs, img, 16)
	t.Logf("MakeExt4Image 16 MiB: %.2fs", time.Since(t0).Seconds())
	st, err := os.Stat(img)
	if err != nil || st.Size() != 16<<20 {
		t.Fatalf("image: %v size %d", err, st.Size())
	}
	ls := debugfs(t, img, "ls /")
	for _, n := range []string{"bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root"} {
		if !strings.Contains(ls, " "+n+" ") && !strings.Contains(ls, " "+n+"\n") && !strings.Contains(ls, " "+n) {
			t.Errorf("%s missing in / of the image:\n%s", n, ls)
		}
	}
	if got := debugfs(t, img, "cat /etc/inittab"); !strings.Contains(got, DefaultInittab) {
		t.Errorf("inittab in image:\n%s", got)
	}
	if got := debugfs(t, img, "stat /sbin/init"); !strings.Contains(got, "Type: symlink") ||
		!strings.Contains(got, `"../bin/busybox"`) {
		t.Errorf("/sbin/init in image:\n%s", got)
	}
	if got := debugfs(t, img, "stat /bin/busybox"); !strings.Contains(got, "Mode:  0755") || !strings.Contains(got, "User:     0") {
		t.Errorf("/bin/busybox in image:\n%s", got)
	}
	out, err = exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Filesystem state:         clean") {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	out, err = exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
}

func TestPython(t *testing.T) {
	RequireNovaPython(t)
	out := PythonCode(t, `
import os, sys
import oslo_messaging, nova.compute.rpcapi
print(sys.executable)
print(os.environ["LXC_AGENT_X"])
print(" ".join(sys.argv[1:]))
print(nova.compute.rpcapi.ComputeAPI.VERSION_ALIASES.get("zed", "?"))
`, map[string]string{"LXC_AGENT_X": "y"}, "a", "b c")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != PythonBin || lines[1] != "y" || lines[2] != "a b c" {
		t.Fatalf("python output:\n%s", out)
	}
	t.Logf("nova compute RPC API version alias for zed: %s", lines[3])

	f := filepath.Join(t.TempDir(), "fail.py")
	os.WriteFile(f, []byte("import sys\nprint('to stdout')\nsys.stderr.write('to stderr\\n')\nsys.exit(3)\n"), 0o644)
	_, err := RunPython(context.Background(), f, nil)
	if err == nil || !strings.Contains(err.Error(), "to stdout") || !strings.Contains(err.Error(), "to stderr") ||
		!strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("RunPython error: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	f2 := filepath.Join(t.TempDir(), "sleep.py")
	os.WriteFile(f2, []byte("import subprocess\nsubprocess.run(['sleep', '30'])\n"), 0o644)
	t0 := time.Now()
	if _, err := RunPython(ctx, f2, nil); err == nil {
		t.Fatal("no error from a timed-out script")
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("timeout took %v (child not killed?)", d)
	}
}

func TestLeftovers(t *testing.T) {
	RequireRoot(t)
	dir := t.TempDir()
	if l, err := FindLeftovers(dir, ""); err != nil || !l.Empty() {
		t.Fatalf("fresh dir: %v %v", l, err)
	}

	// Mounts, including a name the kernel escapes in mountinfo.
	m1 := filepath.Join(dir, "m1")
	m2 := filepath.Join(dir, "with space")
	for _, m := range []string{m1, m2} {
		os.MkdirAll(m, 0o755)
		if err := syscall.Mount("tmpfs", m, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatalf("mount %s: %v", m, err)
		}
		t.Cleanup(func() { syscall.Unmount(m, syscall.MNT_DETACH) })
	}
	ms, err := MountsUnder(dir)
	if err != nil || len(ms) != 2 || !contains(ms, m1) || !contains(ms, m2) {
		t.Fatalf("MountsUnder = %q, %v", ms, err)
	}
	if ms, _ := MountsUnder(dir + "/m"); len(ms) != 0 { // prefix of m1, not a parent
		t.Fatalf("MountsUnder(%s/m) = %q", dir, ms)
	}
	if ms, _ := MountsUnderPid(os.Getpid(), m1); len(ms) != 1 {
		t.Fatalf("MountsUnderPid = %q", ms)
	}

	// A loop device backed by a file under dir.
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	loops, err := LoopDevicesUnder(dir)
	if err != nil || len(loops) != 1 || loops[0].Dev != dev || loops[0].BackingFile != img {
		t.Fatalf("LoopDevicesUnder = %+v, %v (want %s)", loops, err, dev)
	}

	// A veth pair with a test prefix.
	prefix := fmt.Sprintf("tenv%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "link", "add", prefix+"a", "type", "veth", "peer", "name", prefix+"b").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", prefix+"a").Run() })

	l, err := FindLeftovers(dir, prefix)
	if err != nil || len(l.Mounts) != 2 || len(l.Loops) != 1 || len(l.Links) != 2 || l.Empty() {
		t.Fatalf("FindLeftovers = %v, %v", l, err)
	}
	t.Logf("found:\n%s", l)

	// Clean up and check it is all gone.
	for _, m := range []string{m1, m2} {
		if err := syscall.Unmount(m, 0); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v %s", err, out)
	}
	if out, err := exec.Command("ip", "link", "del", prefix+"a").CombinedOutput(); err != nil {
		t.Fatalf("ip link del: %v %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err = FindLeftovers(dir, prefix)
		if err == nil && l.Empty() || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || !l.Empty() {
		t.Fatalf("after cleanup: %v %v", l, err)
	}
	AssertNoLeftovers(t, dir, prefix)
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:            "/a/b",
		`/a\040b`:         "/a b",
		`/a\011b\012c`:    "/a\tb\nc",
		`/a\134b`:         `/a\b`,
		`/trailing\04`:    `/trailing\04`,
		`/x\0401\040\040`: "/x 1  ",
	} {
		if got := procfs.UnescapeMountinfo(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestRabbitMQScript checks hack/rabbitmq.sh (what `make test` uses) on
// free ports: start (twice: idempotent), url, a real AMQP round trip, stop.
func TestRabbitMQScript(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	script, err := filepath.Abs("../../hack/rabbitmq.sh")
	if err != nil {
		t.Fatal(err)
	}
	ports, err := FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rabbit")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(script, args...)
		cmd.Env = append(os.Environ(),
			fmt.Sprintf("LXC_AGENT_RABBIT_PORT=%d", ports[0]),
			fmt.Sprintf("LXC_AGENT_RABBIT_DIST_PORT=%d", ports[1]),
			fmt.Sprintf("LXC_AGENT_RABBIT_EPMD_PORT=%d", ports[2]))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("rabbitmq.sh %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		return strings.TrimSpace(stdout.String()), err
	}
	t.Cleanup(func() { run("stop", dir) })

	if _, err := run("url", dir); err == nil {
		t.Fatal("url succeeded before start")
	}
	t0 := time.Now()
	if out, err := run("start", dir); err != nil || out != "" {
		t.Fatalf("start: %v, stdout %q", err, out)
	}
	t.Logf("hack/rabbitmq.sh start took %.1fs", time.Since(t0).Seconds())
	if _, err := run("start", dir); err != nil {
		t.Fatal(err)
	}
	url, err := run("url", dir)
	if want := fmt.Sprintf("amqp://lxcagent:lxcagent@127.0.0.1:%d/", ports[0]); err != nil || url != want {
		t.Fatalf("url = %q, %v; want %q", url, err, want)
	}
	c := dialAMQP(t, url)
	publish(t, c, "script", "ok")
	if got := get(t, c, "script"); got != "ok" {
		t.Fatalf("got %q", got)
	}
	c.Close()

	var pids []int
	for _, f := range []string{"rabbitmq.pid", "epmd.pid", "rabbitmq-beam.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		var pid int
		fmt.Sscan(string(b), &pid)
		pids = append(pids, pid)
	}
	if _, err := run("stop", dir); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if st, ok := readStat(pid); ok && st.state != "Z" {
			t.Errorf("pid %d still running after stop", pid)
		}
	}
	for _, p := range ports {
		if portOpen(p) {
			t.Errorf("port %d still open after stop", p)
		}
	}
	if _, err := run("status", dir); err == nil {
		t.Fatal("status succeeded after stop")
	}
	if _, err := run("stop", dir); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}
