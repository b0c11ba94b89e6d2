package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestProbeDisk(t *testing.T) {
	img := func(off int, magic string) []byte {
		b := make([]byte, 0x11000)
		copy(b[off:], magic)
		return b
	}
	ext4Claiming := func(blocks uint32) []byte {
		b := img(1080, "\x53\xEF")
		binary.LittleEndian.PutUint32(b[1024+4:], blocks) // s_blocks_count_lo, 1 KiB blocks
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string // fs type, or the error class below
		err  error
	}{
		{"ext4", img(1080, "\x53\xEF"), "ext4", nil},
		{"ext4-fits", ext4Claiming(0x11000 / 1024), "ext4", nil},
		{"ext4-truncated", ext4Claiming(1 << 20), "", ErrInvalidImage},
		{"xfs", img(0, "XFSB"), "xfs", nil},
		{"btrfs", img(0x10040, "_BHRfS_M"), "btrfs", nil},
		{"squashfs", img(0, "hsqs"), "squashfs", nil},
		{"zeros", make([]byte, 1<<16), "", ErrUnsupportedImage},
		{"mbr-without-partitions", img(510, "\x55\xAA"), "", ErrUnsupportedImage},
		{"gpt-bad-crc", append(img(510, "\x55\xAA")[:512], img(512, "EFI PART")[512:]...), "", ErrInvalidImage},
		{"vmdk", img(0, "KDMV"), "", ErrUnsupportedImage},
		{"iso", img(0x8001, "CD001"), "", ErrUnsupportedImage},
		{"empty", nil, "", ErrUnsupportedImage},
	} {
		l, err := probeDisk(bytes.NewReader(tc.data), int64(len(tc.data)), "")
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: %+v, %v; want %v", tc.name, l, err, tc.err)
			} else {
				t.Logf("%s: %v", tc.name, err)
			}
			continue
		}
		if err != nil || l.fsType != tc.want || l.offset != 0 || l.part != 0 {
			t.Errorf("%s: %+v, %v", tc.name, l, err)
		}
	}
}

func TestSniffData(t *testing.T) {
	dir := t.TempDir()
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain.Bytes())
	zw.Close()
	var gzJunk bytes.Buffer
	zw = gzip.NewWriter(&gzJunk)
	zw.Write(randomData(4096))
	zw.Close()
	corruptTar := bytes.Clone(plain.Bytes())
	corruptTar[0] ^= 0xff // checksum no longer matches
	for _, tc := range []struct {
		name, kind, comp string
		data             []byte
		err              error
	}{
		{"qcow2", dataQcow2, "", []byte("QFI\xfb\x00\x00\x00\x03"), nil},
		{"tar", dataTar, "", plain.Bytes(), nil},
		{"tar.gz", dataTar, "gzip", gz.Bytes(), nil},
		{"gzip-not-tar", "", "", gzJunk.Bytes(), ErrUnsupportedImage},
		{"tar-bad-checksum", dataDisk, "", corruptTar, nil},
		{"random", dataDisk, "", randomData(4096), nil},
		{"empty", dataDisk, "", nil, nil},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, tc.data, 0o644)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		kind, comp, what, err := sniffData(f)
		f.Close()
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: %s %v, want %v", tc.name, kind, err, tc.err)
			}
			continue
		}
		if err != nil || kind != tc.kind || comp != tc.comp {
			t.Errorf("%s: kind %q comp %q (%s) %v; want %q %q", tc.name, kind, comp, what, err, tc.kind, tc.comp)
		}
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
