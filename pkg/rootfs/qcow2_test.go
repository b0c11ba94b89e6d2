package rootfs

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// makeQcow2 builds a minimal valid qcow2 v3 image with 64 KiB clusters:
// header (and extensions) in cluster 0, refcount table in 1, refcount
// block in 2, L1 table in 3, L2 table in 4, one data cluster in 5. edit
// changes it before it is returned.
func makeQcow2(edit func(b []byte) []byte) []byte {
	const cs = 1 << 16
	b := make([]byte, 6*cs)
	be := binary.BigEndian
	copy(b, qcow2Magic)
	be.PutUint32(b[4:], 3)
	be.PutUint32(b[20:], 16)     // cluster_bits
	be.PutUint64(b[24:], 1<<30)  // virtual size
	be.PutUint32(b[36:], 1)      // l1_size
	be.PutUint64(b[40:], 3*cs)   // l1_table_offset
	be.PutUint64(b[48:], 1*cs)   // refcount_table_offset
	be.PutUint32(b[56:], 1)      // refcount_table_clusters
	be.PutUint32(b[96:], 4)      // refcount_order
	be.PutUint32(b[100:], 104)   // header_length
	be.PutUint64(b[1*cs:], 2*cs) // refcount table -> block
	be.PutUint64(b[3*cs:], 4*cs|1<<63)
	be.PutUint64(b[4*cs:], 5*cs|1<<63)
	if edit != nil {
		b = edit(b)
	}
	return b
}

// qcow2Ext appends header extensions at offset 104 (then the end marker).
func qcow2Ext(b []byte, exts ...any) {
	be := binary.BigEndian
	off := 104
	for i := 0; i+1 < len(exts); i += 2 {
		typ, data := exts[i].(uint32), []byte(exts[i+1].(string))
		be.PutUint32(b[off:], typ)
		be.PutUint32(b[off+4:], uint32(len(data)))
		copy(b[off+8:], data)
		off += 8 + (len(data)+7)&^7
	}
	be.PutUint32(b[off:], 0)
}

func TestCheckQcow2Synthetic(t *testing.T) {
	be := binary.BigEndian
	const cs = 1 << 16
	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
		err  error
		msg  string
	}{
		{"clean", nil, nil, ""},
		{"clean-v2", func(b []byte) []byte { be.PutUint32(b[4:], 2); clear(b[72:104]); return b }, nil, ""},
		{"dirty-and-zstd", func(b []byte) []byte {
			be.PutUint64(b[72:], qcow2IncompatDirty|qcow2IncompatCompression)
			return b
		}, nil, ""},
		{"backing-file", func(b []byte) []byte {
			copy(b[0x800:], "/etc/shadow")
			be.PutUint64(b[8:], 0x800)
			be.PutUint32(b[16:], uint32(len("/etc/shadow")))
			return b
		}, ErrUnsafeImage, `qcow2 image has a backing file "/etc/shadow": refused`},
		{"backing-offset-only", func(b []byte) []byte { be.PutUint64(b[8:], 1<<40); return b },
			ErrUnsafeImage, "backing file"},
		{"data-file-extension", func(b []byte) []byte { qcow2Ext(b, uint32(qcow2ExtDataFile), "/etc/shadow"); return b },
			ErrUnsafeImage, `external data file "/etc/shadow"`},
		{"data-file-bit", func(b []byte) []byte { be.PutUint64(b[72:], qcow2IncompatDataFile); return b },
			ErrUnsafeImage, "external data file"},
		{"extensions-ok", func(b []byte) []byte {
			qcow2Ext(b, uint32(0x6803f857), "feature names", uint32(qcow2ExtBackingFormat), "raw")
			return b
		}, nil, ""},
		{"extension-too-long", func(b []byte) []byte {
			be.PutUint32(b[104:], 0x6803f857)
			be.PutUint32(b[108:], cs)
			return b
		}, ErrInvalidImage, "runs past the first cluster"},
		{"encrypted", func(b []byte) []byte { be.PutUint32(b[32:], 2); return b }, ErrUnsupportedImage, "encrypted"},
		{"corrupt", func(b []byte) []byte { be.PutUint64(b[72:], qcow2IncompatCorrupt); return b }, ErrInvalidImage, "marked corrupt"},
		{"unknown-feature", func(b []byte) []byte { be.PutUint64(b[72:], 1<<7); return b }, ErrUnsupportedImage, "unknown incompatible"},
		{"version-1", func(b []byte) []byte { be.PutUint32(b[4:], 1); return b }, ErrUnsupportedImage, "version 1"},
		{"cluster-bits", func(b []byte) []byte { be.PutUint32(b[20:], 30); return b }, ErrInvalidImage, "cluster_bits"},
		{"header-truncated", func(b []byte) []byte { return b[:50] }, ErrInvalidImage, "header truncated"},
		{"refcount-table-beyond", func(b []byte) []byte { be.PutUint64(b[48:], 100*cs); return b }, ErrInvalidImage, "refcount table"},
		{"l1-beyond", func(b []byte) []byte { be.PutUint64(b[40:], 100*cs); return b }, ErrInvalidImage, "L1 table"},
		{"l2-beyond", func(b []byte) []byte { be.PutUint64(b[3*cs:], 100*cs|1<<63); return b }, ErrInvalidImage, "L2 table 0"},
		{"data-beyond", func(b []byte) []byte { be.PutUint64(b[4*cs+8:], 100*cs|1<<63); return b }, ErrInvalidImage, "data cluster"},
		{"compressed-beyond", func(b []byte) []byte { be.PutUint64(b[4*cs+16:], 1<<62|100*cs); return b }, ErrInvalidImage, "data cluster"},
		{"truncated-file", func(b []byte) []byte { return b[:4*cs+100] }, ErrInvalidImage, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img")
			os.WriteFile(p, makeQcow2(tc.edit), 0o644)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = checkQcow2(f)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v with %q", err, tc.err, tc.msg)
			}
			t.Log(err)
		})
	}
}

// TestCheckQcow2Real runs the header check (and qemu-img's second opinion)
// on images made by qemu-img.
func TestCheckQcow2Real(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img (qemu-utils)")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	must(t, os.WriteFile(raw, randomData(3<<20), 0o644))
	// mk runs qemu-img with args, "@" standing for the image's path.
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		for i := range args {
			if args[i] == "@" {
				args[i] = p
			}
		}
		run(t, "qemu-img", args...)
		return p
	}
	canary := filepath.Join(dir, "data-canary")
	for _, tc := range []struct {
		name string
		path string
		err  error
		msg  string
	}{
		{"convert", mk("c.qcow2", "convert", "-O", "qcow2", raw, "@"), nil, ""},
		{"compressed", mk("z.qcow2", "convert", "-c", "-O", "qcow2", raw, "@"), nil, ""},
		{"extended-l2", mk("x.qcow2", "convert", "-O", "qcow2", "-o", "extended_l2=on", raw, "@"), nil, ""},
		{"v2", mk("v2.qcow2", "convert", "-O", "qcow2", "-o", "compat=0.10", raw, "@"), nil, ""},
		{"backing-etc-shadow", mk("b.qcow2", "create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", "@", "16M"), ErrUnsafeImage,
			`backing file "/etc/shadow"`},
		{"data-file", mk("d.qcow2", "create", "-f", "qcow2", "-o", "data_file="+canary+",data_file_raw=on", "@", "16M"), ErrUnsafeImage,
			`external data file "` + canary + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = checkQcow2(f)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				if err := qemuImgCheck(t.Context(), tc.path); err != nil {
					t.Errorf("qemu-img check: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v with %q", err, tc.err, tc.msg)
			}
			// The second opinion agrees (it opens without the backing file).
			if err := qemuImgCheck(t.Context(), tc.path); !errors.Is(err, tc.err) {
				t.Errorf("qemu-img check: %v", err)
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		p := filepath.Join(dir, "t.qcow2")
		copyFile(t, filepath.Join(dir, "c.qcow2"), p)
		fi, _ := os.Stat(p)
		run(t, "truncate", "-s", strconv.FormatInt(fi.Size()/2, 10), p)
		f, _ := os.Open(p)
		defer f.Close()
		if _, err := checkQcow2(f); !errors.Is(err, ErrInvalidImage) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("err = %v", err)
		}
	})
}
