package rootfs

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Images shared by the tests of this package, built on first use into one
// directory removed by TestMain. Tests only read them.
var (
	fixtureMu  sync.Mutex
	fixtureDir string
	fixtures   = map[string]string{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// Marker of the small "boot" partition of the partitioned test disks.
const bootMarkerContent = "boot partition\n"

// fixture returns the path of the named test image, building it first.
func fixture(t testing.TB, name string) string {
	t.Helper()
	requireRoot(t)
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	return fixtureLocked(t, name)
}

func fixtureLocked(t testing.TB, name string) string {
	t.Helper()
	if p, ok := fixtures[name]; ok {
		return p
	}
	if fixtureDir == "" {
		d, err := os.MkdirTemp("", "rootfs-fixtures-")
		if err != nil {
			t.Fatal(err)
		}
		fixtureDir = d
	}
	dep := func(n string) string { return fixtureLocked(t, n) }
	p := filepath.Join(fixtureDir, name)
	switch name {
	case "tree":
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		buildRootfsTree(t, p)
		// Owner, mode and mtime that tarball extraction must keep.
		f := filepath.Join(p, "etc/owned")
		must(t, os.WriteFile(f, []byte("owned\n"), 0o640))
		must(t, os.Chown(f, 1000, 1001))
		must(t, os.Chmod(f, 0o640))
		must(t, os.Chtimes(f, testMtime, testMtime))
		must(t, os.Chmod(p, 0o750))
	case "boottree":
		must(t, os.MkdirAll(filepath.Join(p, "etc"), 0o755))
		must(t, os.WriteFile(filepath.Join(p, strings.TrimPrefix(testMarkerPath, "/")), []byte(bootMarkerContent), 0o644))
	case "ext4":
		mkfsImage(t, "ext4", dep("tree"), p, testImageSize)
	case "boot.ext4":
		mkfsImage(t, "ext4", dep("boottree"), p, 8<<20)
	case "xfs", "btrfs", "squashfs":
		mkfsImage(t, name, dep("tree"), p, 0)
	case "fat":
		run(t, "truncate", "-s", "8M", p)
		run(t, "mkfs.vfat", p)
	case "gpt":
		buildDisk(t, p, "gpt", []diskPart{{dep("boot.ext4"), 8, "L"}, {dep("ext4"), 32, "L"}})
	case "mbr":
		buildDisk(t, p, "dos", []diskPart{{dep("fat"), 8, "c"}, {dep("ext4"), 32, "83"}})
	case "mbr-logical":
		buildDisk(t, p, "dos", []diskPart{{dep("fat"), 8, "c"}, {"", 40, "5"}, {dep("ext4"), 32, "83"}})
	case "ext4.qcow2":
		run(t, "qemu-img", "convert", "-O", "qcow2", dep("ext4"), p)
	case "gpt.qcow2":
		run(t, "qemu-img", "convert", "-O", "qcow2", dep("gpt"), p)
	case "tar", "tar.gz", "tar.xz", "tar.zst", "tar.bz2":
		flag := map[string]string{"tar": "", "tar.gz": "-z", "tar.xz": "-J", "tar.zst": "--zstd", "tar.bz2": "-j"}[name]
		args := []string{"--numeric-owner", "-C", dep("tree"), "-cf", p}
		if flag != "" {
			args = append([]string{flag}, args...)
		}
		run(t, "tar", append(args, ".")...)
	case "lxd.tar.gz":
		dir := p + ".d"
		must(t, os.MkdirAll(filepath.Join(dir, "templates"), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "metadata.yaml"), []byte("architecture: x86_64\n"), 0o644))
		run(t, "cp", "-a", dep("tree"), filepath.Join(dir, "rootfs"))
		run(t, "tar", "-z", "--numeric-owner", "-C", dir, "-cf", p, "metadata.yaml", "templates", "rootfs")
		os.RemoveAll(dir)
	default:
		t.Fatalf("no fixture %q", name)
	}
	fixtures[name] = p
	return p
}

var testMtime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("needs %s: %v", name, err)
	}
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// mkfsImage makes a filesystem image of tree at path.
func mkfsImage(t testing.TB, fsType, tree, path string, size int64) {
	t.Helper()
	switch fsType {
	case "ext4":
		run(t, "truncate", "-s", strconv.FormatInt(size, 10), path)
		run(t, "mkfs.ext4", "-q", "-F", "-d", tree, path)
		run(t, "debugfs", "-w", "-R", "sif / mode 040750", path)
	case "btrfs":
		run(t, "truncate", "-s", "128M", path)
		run(t, "mkfs.btrfs", "-q", "--rootdir", tree, path)
	case "squashfs":
		run(t, "mksquashfs", tree, path, "-noappend", "-quiet", "-no-progress")
	case "xfs":
		// mkfs.xfs cannot copy a tree in and wants at least 300 MiB (sparse).
		run(t, "truncate", "-s", "320M", path)
		run(t, "mkfs.xfs", "-q", path)
		mnt := path + ".mnt"
		must(t, os.Mkdir(mnt, 0o755))
		run(t, "mount", "-o", "loop", path, mnt)
		run(t, "cp", "-a", tree+"/.", mnt)
		run(t, "umount", mnt)
		os.Remove(mnt)
	default:
		t.Fatalf("mkfs %s", fsType)
	}
}

type diskPart struct {
	image  string // written into the partition; "" for none
	sizeMB int64
	typ    string // sfdisk type
}

// buildDisk makes a partitioned disk with sfdisk: partitions start at 1 MiB
// and follow each other; a "5" (extended) partition holds the ones after it
// as logical partitions, each preceded by 1 MiB for its EBR.
func buildDisk(t testing.TB, path, label string, parts []diskPart) {
	t.Helper()
	script := "label: " + label + "\nunit: sectors\n"
	start, end := int64(2048), int64(0)
	var offsets []int64
	for _, p := range parts {
		size := p.sizeMB << 11
		script += fmt.Sprintf("start=%d, size=%d, type=%s\n", start, size, p.typ)
		offsets = append(offsets, start*512)
		end = max(end, start+size)
		if p.typ == "5" {
			start += 2048 // first logical partition after its EBR
		} else {
			start += size
		}
	}
	total := (end + 4096) * 512
	run(t, "truncate", "-s", strconv.FormatInt(total, 10), path)
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Skip("needs sfdisk (fdisk)")
	}
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", path)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s\n%s", err, out, script)
	}
	disk, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	defer disk.Close()
	for i, p := range parts {
		if p.image == "" {
			continue
		}
		src, err := os.Open(p.image)
		must(t, err)
		_, err = io.Copy(io.NewOffsetWriter(disk, offsets[i]), src)
		src.Close()
		must(t, err)
	}
}

// copyFile copies src to dst (for tests that damage an image).
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	run(t, "cp", "--sparse=always", src, dst)
}

// testEnv is a playground for Prepare/Release of the fixture images.
type testEnv struct {
	t       *testing.T
	root    string
	baseDir string
	m       *Mounter
}

func newTestEnv(t *testing.T, opts ...MounterOption) *testEnv {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	e := &testEnv{t: t, root: root, baseDir: filepath.Join(root, "base")}
	e.m = NewMounter(e.baseDir, testLogger(t), opts...)
	e.m.busyWait = 10 * time.Millisecond
	e.m.qcow2Via = "fuse" // the nbd module is not on every test host
	t.Cleanup(func() { lastResortCleanup(t, root) })
	return e
}

func (e *testEnv) instance(name string) string { return filepath.Join(e.root, "instances", name) }

// lastResortCleanup frees what a failing test left: it reports it as an
// error, so a passing test must have left nothing.
func lastResortCleanup(t *testing.T, root string) {
	for _, pid := range processesMentioning(root) {
		t.Errorf("process left behind: %d %q", pid, procCmdline(pid))
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	ms, _ := readMountInfo()
	left := mountsUnder(ms, root)
	for i := len(left) - 1; i >= 0; i-- {
		t.Errorf("mount left behind: %s", left[i])
		_ = unix.Unmount(left[i], unix.MNT_DETACH)
	}
	for _, l := range boundLoops() {
		if under(l.backing, root) {
			t.Errorf("loop device left behind: %s on %s", l.dev, l.backing)
			_ = detachLoopDevice(l.dev)
		}
	}
}

// processesMentioning lists processes (but this one) whose command line
// contains s.
func processesMentioning(s string) []int {
	var out []int
	for _, pid := range allPIDs() {
		if pid == os.Getpid() || !procAlive(pid) {
			continue
		}
		if slices.ContainsFunc(procCmdline(pid), func(a string) bool { return strings.Contains(a, s) }) {
			out = append(out, pid)
		}
	}
	return out
}

// assertNoLeaks checks that nothing of the Mounter's is left under root:
// no mount (overlay, base, FUSE export), no loop device bound to a file
// under root, no nbd device served for one, no process mentioning root,
// and the base directory holds only the state directory (empty) and the
// given (tar) bases.
func (e *testEnv) assertNoLeaks(keptBases ...string) {
	e.t.Helper()
	ms, err := readMountInfo()
	if err != nil {
		e.t.Fatal(err)
	}
	if left := mountsUnder(ms, e.root); len(left) > 0 {
		e.t.Errorf("mounts left: %v", left)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.fsType, "fuse") && under(m.mountPoint, e.root) {
			e.t.Errorf("FUSE mount left: %s", m.mountPoint)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var loops []string
		for _, l := range boundLoops() {
			if under(l.backing, e.root) || under(l.backing, fixtureDir) && fixtureDir != "" {
				loops = append(loops, l.dev+" on "+l.backing)
			}
		}
		if len(loops) == 0 {
			break
		}
		if time.Now().After(deadline) {
			e.t.Errorf("loop devices left: %v", loops)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	nbdPIDs, _ := filepath.Glob("/sys/block/nbd*/pid")
	for _, p := range nbdPIDs {
		if b, err := os.ReadFile(p); err == nil {
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); slices.ContainsFunc(procCmdline(pid), func(a string) bool {
				return strings.Contains(a, e.root) || (fixtureDir != "" && strings.Contains(a, fixtureDir))
			}) {
				e.t.Errorf("nbd device left: %s", p)
			}
		}
	}
	for _, pid := range processesMentioning(e.root) {
		e.t.Errorf("process left: %d %q", pid, procCmdline(pid))
	}
	if fixtureDir != "" {
		for _, pid := range processesMentioning(fixtureDir) {
			e.t.Errorf("process left: %d %q", pid, procCmdline(pid))
		}
	}
	ents, err := os.ReadDir(e.baseDir)
	if err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	for _, ent := range ents {
		switch {
		case ent.Name() == stateDirName:
			st, _ := os.ReadDir(filepath.Join(e.baseDir, stateDirName))
			var names []string
			for _, s := range st {
				if id, ok := strings.CutSuffix(s.Name(), ".json"); !ok || !slices.Contains(keptBases, id) {
					names = append(names, s.Name())
				}
			}
			if len(names) > 0 {
				e.t.Errorf("state directory holds %v", names)
			}
		case slices.Contains(keptBases, ent.Name()):
		case ent.Name() == idmapDirName:
			// The per-map directories are kept; they must be empty.
			keys, _ := os.ReadDir(filepath.Join(e.baseDir, idmapDirName))
			for _, k := range keys {
				if left, _ := os.ReadDir(filepath.Join(e.baseDir, idmapDirName, k.Name())); len(left) > 0 {
					e.t.Errorf("%s/%s holds %v", idmapDirName, k.Name(), left)
				}
			}
		default:
			e.t.Errorf("base directory holds %s", ent.Name())
		}
	}
}

// checkRootfs checks the marker file and runs busybox in the rootfs.
func checkRootfs(t *testing.T, rootfs, marker string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rootfs, testMarkerPath))
	if err != nil || string(b) != marker {
		t.Fatalf("marker in %s: %q, %v", rootfs, b, err)
	}
	// The rootfs is writable, the writes land in the instance's upper dir.
	if err := os.WriteFile(filepath.Join(rootfs, "etc/written"), []byte("x"), 0o644); err != nil {
		t.Errorf("write into rootfs: %v", err)
	}
	if marker == bootMarkerContent {
		return // the boot partition has no busybox
	}
	cmd := exec.Command("/bin/sh", "-c", "cat "+testMarkerPath+" >/dev/null && echo ok")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "ok\n" {
		t.Errorf("chroot busybox in %s: %q %v", rootfs, out, err)
	}
}

func meta(id, diskFormat string, props ...string) ImageMeta {
	m := ImageMeta{ID: id, DiskFormat: diskFormat, ContainerFormat: "bare", Properties: map[string]string{}}
	for i := 0; i+1 < len(props); i += 2 {
		m.Properties[props[i]] = props[i+1]
	}
	return m
}
