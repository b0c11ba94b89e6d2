package rootfs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeNBD is a /sys/block tree with nbd devices whose connect/disconnect
// create and remove the pid file, as the kernel does when qemu-nbd serves
// a device.
type fakeNBD struct {
	t     *testing.T
	a     *nbdAllocator
	mu    sync.Mutex
	conns map[string]string // dev -> image
	delay time.Duration     // before the pid file appears
	dead  bool              // connect succeeds but no server ever appears
}

func newFakeNBD(t *testing.T, n int) *fakeNBD {
	root := t.TempDir()
	f := &fakeNBD{t: t, conns: map[string]string{}}
	f.a = &nbdAllocator{sysBlock: filepath.Join(root, "sys/block"), devDir: filepath.Join(root, "dev"),
		lockDir: filepath.Join(root, "lock"), timeout: 300 * time.Millisecond}
	for _, d := range []string{f.a.sysBlock, f.a.devDir, f.a.lockDir, filepath.Join(f.a.sysBlock, "loop0")} {
		must(t, os.MkdirAll(d, 0o755))
	}
	for i := range n {
		must(t, os.Mkdir(filepath.Join(f.a.sysBlock, fmt.Sprintf("nbd%d", i)), 0o755))
	}
	f.a.connect = func(ctx context.Context, dev, image string) error {
		f.mu.Lock()
		if img, ok := f.conns[dev]; ok {
			f.mu.Unlock()
			return fmt.Errorf("%s already serves %s", dev, img)
		}
		f.conns[dev] = image
		f.mu.Unlock()
		if f.dead {
			return nil
		}
		go func() {
			time.Sleep(f.delay)
			os.WriteFile(filepath.Join(f.a.sysBlock, filepath.Base(dev), "pid"), []byte("4242\n"), 0o644)
		}()
		return nil
	}
	f.a.disconnect = func(ctx context.Context, dev string) error {
		f.mu.Lock()
		delete(f.conns, dev)
		f.mu.Unlock()
		os.Remove(filepath.Join(f.a.sysBlock, filepath.Base(dev), "pid"))
		return nil
	}
	return f
}

func TestNBDAllocatorPicksFree(t *testing.T) {
	f := newFakeNBD(t, 4)
	ctx := t.Context()
	// nbd0 is served by someone; nbd1 is being connected by another
	// process (its lock is held).
	must(t, os.WriteFile(filepath.Join(f.a.sysBlock, "nbd0/pid"), []byte("1\n"), 0o644))
	lfd, err := unix.Open(filepath.Join(f.a.lockDir, "lxc-agent-nbd1.lock"), unix.O_RDWR|unix.O_CREAT, 0o600)
	must(t, err)
	must(t, unix.Flock(lfd, unix.LOCK_EX))
	dev, err := f.a.allocate(ctx, "/images/a")
	if err != nil || dev != filepath.Join(f.a.devDir, "nbd2") {
		t.Fatalf("allocate: %s %v; want nbd2", dev, err)
	}
	unix.Close(lfd)
	dev, err = f.a.allocate(ctx, "/images/b")
	if err != nil || dev != filepath.Join(f.a.devDir, "nbd1") {
		t.Fatalf("allocate after unlock: %s %v; want nbd1", dev, err)
	}
	if err := f.a.release(ctx, filepath.Join(f.a.devDir, "nbd2")); err != nil {
		t.Fatal(err)
	}
	if f.a.inUse(2) {
		t.Error("nbd2 still in use after release")
	}
	if err := f.a.release(ctx, filepath.Join(f.a.devDir, "nbd2")); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, err := f.a.allocate(ctx, "/images/c"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.allocate(ctx, "/images/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.allocate(ctx, "/images/e"); err == nil || !strings.Contains(err.Error(), "no free nbd device") {
		t.Errorf("all taken: %v", err)
	}
}

// TestNBDAllocatorConcurrent: builds racing for devices never share one,
// even while the server takes a while to show up.
func TestNBDAllocatorConcurrent(t *testing.T) {
	f := newFakeNBD(t, 6)
	f.delay = 20 * time.Millisecond
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	var fails int
	for i := range 10 {
		wg.Go(func() {
			dev, err := f.a.allocate(t.Context(), fmt.Sprint("/images/", i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails++
				return
			}
			got[dev]++
		})
	}
	wg.Wait()
	for dev, n := range got {
		if n != 1 {
			t.Errorf("%s handed out %d times", dev, n)
		}
	}
	if len(got) != 6 || fails != 4 {
		t.Errorf("%d devices handed out, %d failures; want 6 and 4", len(got), fails)
	}
}

func TestNBDAllocatorTimeout(t *testing.T) {
	f := newFakeNBD(t, 2)
	f.dead = true
	if _, err := f.a.allocate(t.Context(), "/images/a"); err == nil || !strings.Contains(err.Error(), "no server") {
		t.Fatalf("err = %v", err)
	}
	if len(f.conns) != 0 {
		t.Errorf("timed-out connection not undone: %v", f.conns)
	}
	// The lock was released.
	lfd, err := unix.Open(filepath.Join(f.a.lockDir, "lxc-agent-nbd0.lock"), unix.O_RDWR, 0)
	must(t, err)
	defer unix.Close(lfd)
	if err := unix.Flock(lfd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("lock still held: %v", err)
	}
	empty := newFakeNBD(t, 0)
	if _, err := empty.a.allocate(t.Context(), "/x"); err == nil {
		t.Error("allocation without nbd devices")
	}
}

// TestQemuNBDJSON: the json: filename given to qemu-nbd is one QEMU parses,
// and it opens a qcow2 without its backing file.
func TestQemuNBDJSON(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "a,b.qcow2") // a comma, which keyval syntax would need doubled
	run(t, "qemu-img", "create", "-f", "qcow2", "-u", "-b", filepath.Join(dir, "missing-backing"), "-F", "raw", img, "16M")
	out, err := exec.Command("qemu-img", "info", "--output=json", qemuNBDJSON(img)).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", qemuNBDJSON(img), err)
	}
	var info struct {
		Format string `json:"format"`
		Size   int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Format != "qcow2" || info.Size != 16<<20 {
		t.Errorf("info %+v %v: %s", info, err, out)
	}
	for _, p := range []string{img, "/images/a&b<c>\"d"} {
		if got := nbdImage([]string{"qemu-nbd", "--read-only", "--fork", "--connect=/dev/nbd0", qemuNBDJSON(p)}); got != p {
			t.Errorf("nbdImage: %q, want %q", got, p)
		}
	}
	if got := nbdImage([]string{"qemu-nbd", "-c", "/dev/nbd0", "/images/x"}); got != "" {
		t.Errorf("nbdImage of a foreign command line: %q", got)
	}
}
