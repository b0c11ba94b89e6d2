package rootfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestDetectFS(t *testing.T) {
	dir := t.TempDir()
	img := func(off int, magic string) []byte {
		b := make([]byte, 0x11000)
		copy(b[off:], magic)
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" = unsupported
	}{
		{"ext4", img(1080, "\x53\xEF"), "ext4"},
		{"xfs", img(0, "XFSB"), "xfs"},
		{"btrfs", img(0x10040, "_BHRfS_M"), "btrfs"},
		{"squashfs", img(0, "hsqs"), "squashfs"},
		{"zeros", make([]byte, 1<<16), ""},
		{"mbr", img(510, "\x55\xAA"), ""},
		{"gpt", append(img(510, "\x55\xAA")[:512], img(512, "EFI PART")[512:]...), ""},
		{"qcow2", img(0, "QFI\xfb"), ""},
		{"empty", nil, ""},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, tc.data, 0o644)
		got, err := detectFS(p)
		if tc.want == "" {
			if !errors.Is(err, ErrUnsupportedImage) {
				t.Errorf("%s: %q, %v; want ErrUnsupportedImage", tc.name, got, err)
			} else {
				t.Logf("%s: %v", tc.name, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
	}
	if _, err := detectFS(dir); !errors.Is(err, ErrInvalidImage) {
		t.Errorf("directory: %v", err)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
		"43 26 0:38 / /tmp/a\\040b rw,relatime shared:5 master:1 - overlay overlay rw,lowerdir=/l1:/l\\0542,upperdir=/u,workdir=/w,uuid=on\n" +
		"44 26 7:0 / /base/img ro,relatime - ext4 /dev/loop0 ro\n"
	ms, err := parseMountInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[1].mountPoint != "/tmp/a b" || ms[1].fsType != "overlay" || ms[2].source != "/dev/loop0" {
		t.Fatalf("%+v", ms)
	}
	if l := ms[1].lowerDirs(); len(l) != 2 || l[0] != "/l1" || l[1] != "/l,2" {
		t.Errorf("lowerdirs %q", l)
	}
	if u := overlaysUsing(ms, "/l1"); len(u) != 1 || u[0] != "/tmp/a b" {
		t.Errorf("overlaysUsing = %v", u)
	}
	if u := mountsUnder(ms, "/tmp"); len(u) != 1 {
		t.Errorf("mountsUnder = %v", u)
	}
	if _, err := parseMountInfo([]byte("garbage\n")); err == nil {
		t.Error("garbage parsed")
	}
}
