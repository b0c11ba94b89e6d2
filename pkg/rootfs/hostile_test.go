package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func gzipBytes(t testing.TB, b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// TestPrepareHostile feeds hostile, damaged and mislabelled images to
// Prepare: each is refused with a precise error, nothing is left behind,
// nothing outside the Mounter's directories changes, and for qcow2 images
// no QEMU process is ever started.
func TestPrepareHostile(t *testing.T) {
	e := newTestEnv(t)
	ctx := t.Context()
	outside := filepath.Join(e.root, "outside")
	must(t, os.Mkdir(outside, 0o755))
	must(t, os.WriteFile(filepath.Join(outside, "canary"), []byte("canary\n"), 0o644))
	imgDir := filepath.Join(e.root, "images")
	must(t, os.Mkdir(imgDir, 0o755))

	write := func(name string, data []byte) string {
		p := filepath.Join(imgDir, name)
		must(t, os.WriteFile(p, data, 0o644))
		return p
	}
	damaged := func(name, fx string, size func(int64) int64) string {
		p := filepath.Join(imgDir, name)
		copyFile(t, fixture(t, fx), p)
		fi, err := os.Stat(p)
		must(t, err)
		run(t, "truncate", "-s", strconv.FormatInt(size(fi.Size()), 10), p)
		return p
	}
	qemuImg := func(name string, args ...string) string {
		p := filepath.Join(imgDir, name)
		run(t, "qemu-img", append(append([]string{"create", "-f", "qcow2"}, args...), p, "32M")...)
		return p
	}
	root := tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755}
	etc := tarEntry{name: "./etc/", typ: tar.TypeDir, mode: 0o755}

	for _, tc := range []struct {
		name  string
		image func() string
		meta  ImageMeta
		want  error
		msg   string
	}{
		{"tar-dotdot", func() string {
			return write("dotdot.tar", makeTar(t, root, etc, tarEntry{name: "../outside/evil", body: "x"}))
		}, meta(imgID, "root-tar"), ErrUnsafeImage, `tar entry "../outside/evil" escapes the root`},
		{"tar-gz-dotdot-etc-passwd", func() string {
			return write("dotdot.tar.gz", gzipBytes(t, makeTar(t, root, tarEntry{name: "../../../../../../etc/passwd", body: "x"})))
		}, meta(imgID, "root-tar"), ErrUnsafeImage, "escapes the root"},
		{"tar-absolute", func() string {
			return write("abs.tar", makeTar(t, root, tarEntry{name: filepath.Join(outside, "evil"), body: "x"}))
		}, meta(imgID, "root-tar"), ErrUnsafeImage, "absolute path"},
		{"tar-symlink-etc-then-write", func() string {
			return write("symetc.tar", makeTar(t, root, tarEntry{name: "etc", typ: tar.TypeSymlink, link: "/etc"},
				tarEntry{name: "etc/lxc-agent-test-evil", body: "x"}))
		}, meta(imgID, "root-tar"), ErrUnsafeImage, `"etc" is a symlink`},
		{"tar-symlink-out-then-write", func() string {
			return write("symout.tar", makeTar(t, root, tarEntry{name: "etc", typ: tar.TypeSymlink, link: outside},
				tarEntry{name: "etc/evil", body: "x"}))
		}, meta(imgID, "raw"), ErrUnsafeImage, `"etc" is a symlink`},
		{"tar-hardlink-etc-shadow", func() string {
			return write("hardlink.tar", makeTar(t, root, etc, tarEntry{name: "etc/shadow", typ: tar.TypeLink, link: "/etc/shadow"}))
		}, meta(imgID, "root-tar"), ErrUnsafeImage, `hard link to "/etc/shadow" outside the root`},
		{"tar-truncated", func() string {
			return damaged("trunc.tar.gz", "tar.gz", func(n int64) int64 { return n / 2 })
		}, meta(imgID, "root-tar"), ErrInvalidImage, "tar"},
		{"qcow2-backing-etc-shadow", func() string {
			return qemuImg("backing.qcow2", "-u", "-b", "/etc/shadow", "-F", "raw")
		}, meta(imgID, "qcow2"), ErrUnsafeImage, `qcow2 image has a backing file "/etc/shadow": refused`},
		{"qcow2-data-file", func() string {
			return qemuImg("datafile.qcow2", "-o", "data_file="+filepath.Join(outside, "canary")+",data_file_raw=on")
		}, meta(imgID, "qcow2"), ErrUnsafeImage, "external data file"},
		{"qcow2-truncated", func() string {
			return damaged("trunc.qcow2", "ext4.qcow2", func(n int64) int64 { return n / 2 })
		}, meta(imgID, "qcow2"), ErrInvalidImage, "truncated"},
		{"qcow2-header-only", func() string {
			return damaged("hdr.qcow2", "ext4.qcow2", func(int64) int64 { return 64 })
		}, meta(imgID, "qcow2"), ErrInvalidImage, "qcow2"},
		{"ext4-truncated", func() string {
			return damaged("trunc.ext4", "ext4", func(n int64) int64 { return n / 2 })
		}, meta(imgID, "raw"), ErrInvalidImage, "bare ext4 filesystem needs 33554432 bytes but the image holds only 16777216: truncated"},
		{"gpt-partition-beyond-end", func() string {
			return damaged("trunc-gpt", "gpt", func(n int64) int64 { return 30 << 20 })
		}, meta(imgID, "raw"), ErrInvalidImage, "GPT partition 2 (sectors 18432-83967) lies beyond the end of the disk"},
		{"mbr-partition-beyond-end", func() string {
			return damaged("trunc-mbr", "mbr", func(n int64) int64 { return 30 << 20 })
		}, meta(imgID, "raw"), ErrInvalidImage, "MBR partition 2 (sectors 18432-83967) lies beyond the end of the disk"},
		{"raw-garbage", func() string { return write("garbage", randomData(4<<20)) },
			meta(imgID, "raw"), ErrUnsupportedImage, "no ext2/3/4, xfs, btrfs or squashfs filesystem"},
		{"raw-gzip-not-tar", func() string { return write("junk.gz", gzipBytes(t, randomData(1<<16))) },
			meta(imgID, "raw"), ErrUnsupportedImage, "gzip-compressed data that is not a tar archive"},
		{"mismatch-qcow2-says-raw-bytes", func() string { return fixture(t, "ext4") },
			meta(imgID, "qcow2"), ErrInvalidImage, "disk_format is qcow2 but the image is a disk or filesystem image"},
		{"mismatch-raw-says-qcow2-bytes", func() string { return fixture(t, "ext4.qcow2") },
			meta(imgID, "raw"), ErrInvalidImage, "disk_format is raw but the image is a qcow2 image"},
		{"mismatch-root-tar-says-ext4-bytes", func() string { return fixture(t, "ext4") },
			meta(imgID, "root-tar"), ErrInvalidImage, "disk_format is root-tar but the image is"},
		{"unsupported-disk-format", func() string { return fixture(t, "ext4") },
			meta(imgID, "vmdk"), ErrUnsupportedImage, `disk_format "vmdk" is not supported`},
		{"unsupported-container-format", func() string { return fixture(t, "ext4") },
			ImageMeta{ID: imgID, DiskFormat: "raw", ContainerFormat: "ovf"}, ErrUnsupportedImage, `container_format "ovf"`},
		{"root-partition-missing", func() string { return fixture(t, "gpt") },
			meta(imgID, "raw", RootPartitionProperty, "7"), ErrInvalidImage, "the GPT disk has no partition 7"},
		{"root-partition-not-linux", func() string { return fixture(t, "mbr") },
			meta(imgID, "raw", RootPartitionProperty, "1"), ErrUnsupportedImage, "partition 1 holds no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			image := tc.image()
			before := snapshotTree(t, e.root, e.baseDir)
			startedQEMU := false
			e.m.failpoint = func(step string) error {
				if step == "record" && strings.HasSuffix(image, "qcow2") {
					startedQEMU = true // the checks come before the record
				}
				return nil
			}
			defer func() { e.m.failpoint = nil }()
			inst := e.instance(tc.name)
			_, err := e.m.Prepare(ctx, tc.meta, image, inst)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v\nwant %v with %q", err, tc.want, tc.msg)
			}
			t.Log(err)
			if startedQEMU {
				t.Error("the qcow2 image got past the checks")
			}
			if _, err := os.Stat(inst); !os.IsNotExist(err) {
				t.Errorf("instance dir left (%v)", err)
			}
			if after := snapshotTree(t, e.root, e.baseDir); after != before {
				t.Errorf("files outside the base directory changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if _, err := os.Lstat("/etc/lxc-agent-test-evil"); err == nil {
				t.Fatal("/etc/lxc-agent-test-evil written")
			}
			e.assertNoLeaks()
		})
	}
}

// TestPrepareTarSanitized: a root tarball with a device node and a setuid
// binary is extracted with both sanitized by default, and kept when the
// options allow them.
func TestPrepareTarSanitized(t *testing.T) {
	data := gzipBytes(t, makeTar(t,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "./dev/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "./dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0},
		tarEntry{name: "./bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "./bin/su", mode: 0o4755, body: "su"},
		tarEntry{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "./etc/lxc-agent-marker", body: testMarkerContent},
	))
	for _, allow := range []bool{false, true} {
		t.Run("allow="+strconv.FormatBool(allow), func(t *testing.T) {
			e := newTestEnv(t, WithTarOptions(TarOptions{AllowDevices: allow, AllowSetuid: allow}))
			ctx := t.Context()
			image := filepath.Join(e.root, "img.tar.gz")
			must(t, os.WriteFile(image, data, 0o644))
			inst := e.instance("i")
			r, err := e.m.Prepare(ctx, meta(imgID, "root-tar"), image, inst)
			if err != nil {
				t.Fatal(err)
			}
			_, derr := os.Lstat(filepath.Join(r, "dev/sda"))
			fi, err := os.Lstat(filepath.Join(r, "bin/su"))
			must(t, err)
			if suid := fi.Mode()&os.ModeSetuid != 0; suid != allow || (derr == nil) != allow {
				t.Errorf("allow=%v: bin/su %v, dev/sda %v", allow, fi.Mode(), derr)
			}
			must(t, e.m.Release(ctx, inst))
			must(t, e.m.RemoveBase(ctx, imgID))
			e.assertNoLeaks()
		})
	}
}
