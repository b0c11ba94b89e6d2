package rootfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// partition is one entry of a disk's partition table.
type partition struct {
	number int    // 1-based, as the kernel numbers it (MBR logical from 5)
	start  int64  // byte offset in the disk
	size   int64  // bytes
	typ    string // "0x83" (MBR) or the type GUID (GPT)
	hint   int    // what the type says: 2 root, 1 Linux data, 0 other
	name   string // GPT partition name
}

func (p partition) String() string {
	return fmt.Sprintf("partition %d (type %s, %d bytes at offset %d)", p.number, p.typ, p.size, p.start)
}

// partitionTable is a parsed MBR or GPT.
type partitionTable struct {
	scheme string // "mbr" or "gpt"
	parts  []partition
}

const (
	mbrSectorSize = 512
	maxGPTEntries = 1 << 20 // bytes of GPT partition entries we accept
	maxLogical    = 128     // logical partitions followed in an MBR extended partition
)

// GPT partition type GUIDs that say "Linux": the root partition types of
// the Discoverable Partitions Specification rank above Linux data.
var gptLinuxTypes = map[string]int{
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": 1, // Linux filesystem data
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": 2, // root (x86-64)
	"44479540-F297-41B2-9AF7-D131D5F0458A": 2, // root (x86)
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": 2, // root (arm64)
	"69DAD710-2CE4-4E3C-B16C-21A1D49ABED3": 2, // root (arm)
	"72EC70A6-CF74-40E6-BD49-4BDA08E8F224": 2, // root (riscv64)
}

// readPartitionTable parses the GPT (512- or 4096-byte sectors) or MBR at
// the start of a disk of size bytes. It returns nil, nil if there is none.
// A table that is present but broken (bad CRC, entries or partitions past
// the end of the disk, a loop of extended boot records, a protective MBR
// without a GPT) is an error wrapping ErrInvalidImage.
func readPartitionTable(r io.ReaderAt, size int64) (*partitionTable, error) {
	for _, ss := range []int64{512, 4096} {
		t, err := readGPT(r, size, ss)
		if t != nil || err != nil {
			return t, err
		}
	}
	return readMBR(r, size)
}

func readAt(r io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

func invalidf(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, ErrInvalidImage)...)
}

// readGPT returns nil, nil if there is no "EFI PART" signature at LBA 1.
func readGPT(r io.ReaderAt, size, ss int64) (*partitionTable, error) {
	if size < 2*ss {
		return nil, nil
	}
	hdr, err := readAt(r, ss, int(ss))
	if err != nil {
		return nil, err
	}
	if string(hdr[:8]) != "EFI PART" {
		return nil, nil
	}
	le := binary.LittleEndian
	hsize := int64(le.Uint32(hdr[12:]))
	if hsize < 92 || hsize > ss {
		return nil, invalidf("GPT header size %d", hsize)
	}
	want := le.Uint32(hdr[16:])
	h := bytes.Clone(hdr[:hsize])
	clear(h[16:20])
	if got := crc32.ChecksumIEEE(h); got != want {
		return nil, invalidf("GPT header CRC is %#08x, header says %#08x (corrupt or truncated disk)", got, want)
	}
	if my := le.Uint64(hdr[24:]); my != 1 {
		return nil, invalidf("GPT header at LBA 1 says it is at LBA %d", my)
	}
	sectors := size / ss
	entLBA := le.Uint64(hdr[72:])
	n := int64(le.Uint32(hdr[80:]))
	esz := int64(le.Uint32(hdr[84:]))
	if esz < 128 || esz%8 != 0 || esz > 4096 {
		return nil, invalidf("GPT partition entry size %d", esz)
	}
	if n*esz > maxGPTEntries {
		return nil, invalidf("GPT has %d partition entries of %d bytes (more than %d bytes)", n, esz, maxGPTEntries)
	}
	if entLBA < 2 || entLBA >= uint64(sectors) || int64(entLBA)*ss+n*esz > size {
		return nil, invalidf("GPT partition entries (LBA %d, %d entries) lie beyond the end of the disk (%d sectors of %d bytes)",
			entLBA, n, sectors, ss)
	}
	ents, err := readAt(r, int64(entLBA)*ss, int(n*esz))
	if err != nil {
		return nil, err
	}
	if got, want := crc32.ChecksumIEEE(ents), le.Uint32(hdr[88:]); got != want {
		return nil, invalidf("GPT partition entries CRC is %#08x, header says %#08x", got, want)
	}
	t := &partitionTable{scheme: "gpt"}
	for i := range n {
		e := ents[i*esz : (i+1)*esz]
		if allZero(e[:16]) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		num := int(i) + 1
		if first < 1 || last < first {
			return nil, invalidf("GPT partition %d: sectors %d-%d", num, first, last)
		}
		if last >= uint64(sectors) {
			return nil, invalidf("GPT partition %d (sectors %d-%d) lies beyond the end of the disk (%d sectors)", num, first, last, sectors)
		}
		typ := guidString(e[:16])
		t.parts = append(t.parts, partition{
			number: num,
			start:  int64(first) * ss,
			size:   int64(last-first+1) * ss,
			typ:    typ,
			hint:   gptLinuxTypes[typ],
			name:   utf16Name(e[56:128]),
		})
	}
	return t, nil
}

// readMBR returns nil, nil without a plausible MBR: no 0x55AA signature, or
// status bytes other than 0x00/0x80 (a filesystem's boot sector).
func readMBR(r io.ReaderAt, size int64) (*partitionTable, error) {
	if size < mbrSectorSize {
		return nil, nil
	}
	b, err := readAt(r, 0, mbrSectorSize)
	if err != nil {
		return nil, err
	}
	if b[510] != 0x55 || b[511] != 0xAA {
		return nil, nil
	}
	ents := b[446:510]
	for i := range 4 {
		if s := ents[i*16]; s != 0 && s != 0x80 {
			return nil, nil
		}
	}
	sectors := uint64(size / mbrSectorSize)
	t := &partitionTable{scheme: "mbr"}
	le := binary.LittleEndian
	for i := range 4 {
		e := ents[i*16 : (i+1)*16]
		typ := e[4]
		start, n := uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:]))
		if typ == 0 || n == 0 {
			continue
		}
		if typ == 0xEE {
			return nil, invalidf("protective MBR (type 0xee) but no valid GPT header")
		}
		if start == 0 || start+n > sectors {
			return nil, invalidf("MBR partition %d (sectors %d-%d) lies beyond the end of the disk (%d sectors)", i+1, start, start+n-1, sectors)
		}
		if typ == 0x05 || typ == 0x0F || typ == 0x85 {
			logical, err := readEBRs(r, start, start+n)
			if err != nil {
				return nil, err
			}
			t.parts = append(t.parts, logical...)
			continue
		}
		t.parts = append(t.parts, mbrPartition(i+1, typ, start, n))
	}
	return t, nil
}

func mbrPartition(num int, typ byte, start, n uint64) partition {
	p := partition{number: num, start: int64(start) * mbrSectorSize, size: int64(n) * mbrSectorSize, typ: fmt.Sprintf("0x%02x", typ)}
	if typ == 0x83 {
		p.hint = 1
	}
	return p
}

// readEBRs follows the chain of extended boot records of the extended
// partition spanning sectors [ext, end) and returns its logical partitions,
// numbered from 5.
func readEBRs(r io.ReaderAt, ext, end uint64) ([]partition, error) {
	var out []partition
	seen := map[uint64]bool{}
	le := binary.LittleEndian
	for cur := ext; ; {
		if seen[cur] || len(out) >= maxLogical {
			return nil, invalidf("MBR extended partition: loop or more than %d logical partitions", maxLogical)
		}
		seen[cur] = true
		b, err := readAt(r, int64(cur)*mbrSectorSize, mbrSectorSize)
		if err != nil {
			return nil, err
		}
		if b[510] != 0x55 || b[511] != 0xAA {
			return nil, invalidf("MBR extended boot record at sector %d has no signature", cur)
		}
		e0, e1 := b[446:462], b[462:478]
		num := 5 + len(out)
		if typ, rel, n := e0[4], uint64(le.Uint32(e0[8:])), uint64(le.Uint32(e0[12:])); typ != 0 && n != 0 {
			start := cur + rel
			if rel == 0 || start+n > end {
				return nil, invalidf("MBR logical partition %d (sectors %d-%d) lies beyond its extended partition (sectors %d-%d)",
					num, start, start+n-1, ext, end-1)
			}
			out = append(out, mbrPartition(num, typ, start, n))
		}
		next := uint64(le.Uint32(e1[8:]))
		if e1[4] == 0 || next == 0 {
			return out, nil
		}
		if cur = ext + next; cur >= end {
			return nil, invalidf("MBR extended boot record at sector %d lies beyond its extended partition", cur)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// guidString formats a GPT GUID (first three fields little-endian).
func guidString(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return strings.ToValidUTF8(string(utf16.Decode(u)), "?")
}
