package rootfs

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

const (
	guidLinuxData = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	guidRootX8664 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
	guidMSData    = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
	guidESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
)

func guidBytes(s string) []byte {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		panic(s)
	}
	b := bytes.Clone(h)
	// First three fields little-endian.
	b[0], b[1], b[2], b[3] = h[3], h[2], h[1], h[0]
	b[4], b[5] = h[5], h[4]
	b[6], b[7] = h[7], h[6]
	return b
}

type gptPart struct {
	typ         string
	first, last uint64
	ext4        bool // put an ext4 superblock magic in it
}

// makeGPT builds a disk of size bytes with a protective MBR and a primary
// GPT (128 entries of 128 bytes at LBA 2) with valid CRCs; damage, if set,
// is applied to the header and entries after the CRCs are computed.
func makeGPT(size, ss int64, parts []gptPart, damage func(hdr, ents []byte)) []byte {
	d := make([]byte, size)
	le := binary.LittleEndian
	sectors := uint64(size / ss)
	d[446+4] = 0xEE
	le.PutUint32(d[446+8:], 1)
	le.PutUint32(d[446+12:], uint32(min(sectors-1, 0xffffffff)))
	d[510], d[511] = 0x55, 0xAA
	ents := d[2*ss : 2*ss+128*128]
	for i, p := range parts {
		e := ents[i*128:]
		copy(e, guidBytes(p.typ))
		copy(e[16:], guidBytes("11111111-2222-3333-4444-55555555555"+string(rune('0'+i))))
		le.PutUint64(e[32:], p.first)
		le.PutUint64(e[40:], p.last)
		if p.ext4 && int64(p.first)*ss+1082 <= size {
			copy(d[int64(p.first)*ss+1080:], []byte{0x53, 0xEF})
		}
	}
	hdr := d[ss : ss+92]
	copy(hdr, "EFI PART")
	le.PutUint32(hdr[8:], 0x00010000)
	le.PutUint32(hdr[12:], 92)
	le.PutUint64(hdr[24:], 1)
	le.PutUint64(hdr[32:], sectors-1)
	le.PutUint64(hdr[40:], 34)
	le.PutUint64(hdr[48:], sectors-34)
	le.PutUint64(hdr[72:], 2)
	le.PutUint32(hdr[80:], 128)
	le.PutUint32(hdr[84:], 128)
	le.PutUint32(hdr[88:], crc32.ChecksumIEEE(ents))
	le.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr))
	if damage != nil {
		damage(hdr, ents)
	}
	return d
}

func TestGPT(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name     string
		disk     []byte
		rootPart string
		part     int
		offset   int64
		err      error
		msg      string
	}{
		{"linux-largest", makeGPT(mib, 512, []gptPart{
			{guidESP, 34, 99, false}, {guidLinuxData, 100, 299, true}, {guidLinuxData, 300, 1999, true},
		}, nil), "", 3, 300 * 512, nil, ""},
		{"root-type-wins-over-size", makeGPT(mib, 512, []gptPart{
			{guidLinuxData, 100, 1799, true}, {guidRootX8664, 1800, 1999, true},
		}, nil), "", 2, 1800 * 512, nil, ""},
		{"linux-type-wins-over-other", makeGPT(mib, 512, []gptPart{
			{guidMSData, 100, 1799, true}, {guidLinuxData, 1800, 1999, true},
		}, nil), "", 2, 1800 * 512, nil, ""},
		{"os_root_partition", makeGPT(mib, 512, []gptPart{
			{guidLinuxData, 100, 199, true}, {guidLinuxData, 200, 1999, true},
		}, nil), "1", 1, 100 * 512, nil, ""},
		{"4k-sectors", makeGPT(8*mib, 4096, []gptPart{{guidLinuxData, 10, 1000, true}}, nil), "", 1, 10 * 4096, nil, ""},
		{"no-linux-fs", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 1999, false}}, nil), "", 0, 0,
			ErrUnsupportedImage, "no partition holds"},
		{"os_root_partition-not-a-number", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 1999, true}}, nil), "root", 0, 0,
			ErrInvalidImage, "is not a partition number"},
		{"os_root_partition-missing", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 1999, true}}, nil), "3", 0, 0,
			ErrInvalidImage, "has no partition 3"},
		{"os_root_partition-no-fs", makeGPT(mib, 512, []gptPart{{guidESP, 34, 99, false}, {guidLinuxData, 100, 1999, true}}, nil), "1", 0, 0,
			ErrUnsupportedImage, "partition 1 holds no"},
		{"partition-beyond-end", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 4000, true}}, nil), "", 0, 0,
			ErrInvalidImage, "lies beyond the end of the disk"},
		{"bad-header-crc", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 1999, true}}, func(h, e []byte) { h[40]++ }), "", 0, 0,
			ErrInvalidImage, "GPT header CRC"},
		{"bad-entries-crc", makeGPT(mib, 512, []gptPart{{guidLinuxData, 100, 1999, true}}, func(h, e []byte) { e[40]++ }), "", 0, 0,
			ErrInvalidImage, "entries CRC"},
		{"inverted-partition", makeGPT(mib, 512, []gptPart{{guidLinuxData, 1999, 100, true}}, nil), "", 0, 0,
			ErrInvalidImage, "sectors 1999-100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := probeDisk(bytes.NewReader(tc.disk), int64(len(tc.disk)), tc.rootPart)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want %v with %q", err, tc.err, tc.msg)
				}
				t.Log(err)
				return
			}
			if err != nil || l.scheme != "gpt" || l.part != tc.part || l.offset != tc.offset || l.fsType != "ext4" {
				t.Fatalf("%+v %v; want partition %d at %d", l, err, tc.part, tc.offset)
			}
		})
	}
	// Entries beyond the end: the entries LBA is past the disk.
	d := makeGPT(1<<20, 512, nil, nil)
	binary.LittleEndian.PutUint64(d[512+72:], 5000)
	binary.LittleEndian.PutUint32(d[512+16:], 0)
	h := bytes.Clone(d[512 : 512+92])
	binary.LittleEndian.PutUint32(d[512+16:], crc32.ChecksumIEEE(h))
	if _, err := readPartitionTable(bytes.NewReader(d), int64(len(d))); !errors.Is(err, ErrInvalidImage) {
		t.Errorf("entries beyond the end: %v", err)
	}
}

type mbrEntry struct {
	status     byte
	typ        byte
	start, num uint32
}

func putMBR(d []byte, at int64, ents []mbrEntry) {
	le := binary.LittleEndian
	for i, e := range ents {
		p := d[at+446+int64(i)*16:]
		p[0], p[4] = e.status, e.typ
		le.PutUint32(p[8:], e.start)
		le.PutUint32(p[12:], e.num)
	}
	d[at+510], d[at+511] = 0x55, 0xAA
}

func ext4At(d []byte, sector int64) { copy(d[sector*512+1080:], []byte{0x53, 0xEF}) }

func TestMBR(t *testing.T) {
	const sectors = 4096
	newDisk := func() []byte { return make([]byte, sectors*512) }
	for _, tc := range []struct {
		name   string
		build  func() []byte
		part   int
		offset int64
		err    error
		msg    string
	}{
		{"primary", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0x80, 0x0c, 2048, 100}, {0, 0x83, 2148, 1900}})
			ext4At(d, 2148)
			return d
		}, 2, 2148 * 512, nil, ""},
		{"logical", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0, 0x83, 100, 50}, {0, 0x05, 200, 3800}})
			ext4At(d, 100)
			putMBR(d, 200*512, []mbrEntry{{0, 0x83, 10, 500}, {0, 0x05, 600, 3000}}) // p5 at 210, next EBR at 800
			ext4At(d, 210)
			putMBR(d, 800*512, []mbrEntry{{0, 0x83, 10, 2000}}) // p6 at 810, largest
			ext4At(d, 810)
			return d
		}, 6, 810 * 512, nil, ""},
		{"ebr-loop", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0, 0x0f, 200, 3800}})
			putMBR(d, 200*512, []mbrEntry{{0, 0x83, 10, 100}, {0, 0x05, 300, 10}}) // next EBR at 200+300
			putMBR(d, 500*512, []mbrEntry{{0, 0x83, 10, 100}, {0, 0x05, 300, 10}}) // ... and again itself
			return d
		}, 0, 0, ErrInvalidImage, "loop"},
		{"logical-beyond-extended", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0, 0x05, 200, 1000}})
			putMBR(d, 200*512, []mbrEntry{{0, 0x83, 10, 5000}})
			return d
		}, 0, 0, ErrInvalidImage, "beyond its extended partition"},
		{"beyond-end", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0, 0x83, 2048, 8192}})
			ext4At(d, 2048)
			return d
		}, 0, 0, ErrInvalidImage, "lies beyond the end of the disk"},
		{"protective-without-gpt", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0, 0xee, 1, sectors - 1}})
			return d
		}, 0, 0, ErrInvalidImage, "protective MBR"},
		{"boot-sector-not-mbr", func() []byte {
			d := newDisk()
			putMBR(d, 0, []mbrEntry{{0x12, 0x83, 2048, 100}}) // status bytes of boot code
			return d
		}, 0, 0, ErrUnsupportedImage, "no ext2/3/4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.build()
			l, err := probeDisk(bytes.NewReader(d), int64(len(d)), "")
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want %v with %q", err, tc.err, tc.msg)
				}
				t.Log(err)
				return
			}
			if err != nil || l.scheme != "mbr" || l.part != tc.part || l.offset != tc.offset {
				t.Fatalf("%+v %v; want partition %d at %d", l, err, tc.part, tc.offset)
			}
		})
	}
}

func TestGUIDString(t *testing.T) {
	for _, g := range []string{guidLinuxData, guidRootX8664, guidESP} {
		if got := guidString(guidBytes(g)); got != g {
			t.Errorf("%s -> %s", g, got)
		}
	}
}
