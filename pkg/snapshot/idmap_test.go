package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

var testMaps = []driver.IDMap{
	{Kind: 'u', ContainerID: 0, HostID: 100000, Count: 65536},
	{Kind: 'g', ContainerID: 0, HostID: 100000, Count: 65536},
}

// shiftedTree is tree(t) as an unprivileged instance's rootfs holds it:
// owned by host ids, with a v3 file capability for the mapped root.
func shiftedTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("needs root (chown); euid %d", os.Geteuid())
	}
	dst := filepath.Join(t.TempDir(), "shifted")
	if _, err := idmap.ShiftedCopy(context.Background(), tree(t), dst, testMaps); err != nil {
		t.Fatal(err)
	}
	caps := make([]byte, 24)
	binary.LittleEndian.PutUint32(caps, 0x03000001)
	binary.LittleEndian.PutUint32(caps[4:], 1<<13)
	binary.LittleEndian.PutUint32(caps[20:], 100000)
	if err := unix.Setxattr(filepath.Join(dst, "bin", "tool"), "security.capability", caps, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "hostroot"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestWriteTarUnshifted(t *testing.T) {
	root := shiftedTree(t)
	var buf bytes.Buffer
	if _, err := WriteTarUnshifted(context.Background(), root, &buf, testMaps); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{"bin/": {0, 0}, "bin/tool": {0, 0}, "etc/passwd": {1000, 1001}, "hostroot": {65534, 65534}}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if w, ok := want[h.Name]; ok {
			if h.Uid != w[0] || h.Gid != w[1] {
				t.Errorf("%s: %d:%d, want %v", h.Name, h.Uid, h.Gid, w)
			}
			delete(want, h.Name)
		}
		if h.Name == "bin/tool" {
			c := h.PAXRecords["SCHILY.xattr.security.capability"]
			if len(c) != 24 || binary.LittleEndian.Uint32([]byte(c[20:])) != 0 {
				t.Errorf("bin/tool capability %x: want a v3 with root id 0", c)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("entries missing: %v", want)
	}
	if _, err := WriteTarUnshifted(context.Background(), root, io.Discard, nil); !errors.Is(err, idmap.ErrInvalid) {
		t.Errorf("no maps: %v", err)
	}
}

func TestWriteExt4Unshifted(t *testing.T) {
	root := shiftedTree(t)
	out := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := WriteExt4Unshifted(context.Background(), root, tmp, f, testMaps); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for path, want := range map[string]string{"/etc/passwd": "User:  1000   Group:  1001", "/bin/tool": "User:     0   Group:     0"} {
		stat, _ := exec.Command("debugfs", "-R", "stat "+path, out).CombinedOutput()
		if !strings.Contains(string(stat), want) {
			t.Errorf("%s in the image: want %q in\n%s", path, want, stat)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
