package rootfs

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// fsMagic locates a filesystem's superblock magic.
type fsMagic struct {
	fsType string
	off    int64
	magic  []byte
}

var fsMagics = []fsMagic{
	{"ext4", 1080, []byte{0x53, 0xEF}}, // ext2/3/4 s_magic 0xEF53 (LE); the ext4 driver mounts all three
	{"xfs", 0, []byte("XFSB")},
	{"btrfs", 0x10040, []byte("_BHRfS_M")},
	{"squashfs", 0, []byte("hsqs")},
}

const supportedFSList = "ext2/3/4, xfs, btrfs or squashfs"

// Signatures of formats that are neither a filesystem, nor a partition
// table, nor qcow2 or tar, for the error message.
var notFSMagics = []struct {
	what  string
	off   int64
	magic []byte
}{
	{"a VMDK image", 0, []byte("KDMV")},
	{"a VHDX image", 0, []byte("vhdxfile")},
	{"a VHD image", 0, []byte("conectix")},
	{"a VDI image", 0x40, []byte{0x7f, 0x10, 0xda, 0xbe}},
	{"a QED image", 0, []byte("QED\x00")},
	{"an ISO 9660 image", 0x8001, []byte("CD001")},
}

// Kinds of image data, as told by the bytes.
const (
	dataQcow2 = "qcow2"
	dataTar   = "tar"
	dataDisk  = "disk" // anything else: probed as a filesystem or partitioned disk
)

// sniffData tells what an image file holds: a qcow2 image, a tar archive
// (plain or compressed with comp), or else data to probe as a disk; what
// describes it for messages. Compressed data that is not a tar archive is
// an error wrapping ErrUnsupportedImage.
func sniffData(f *os.File) (kind, comp, what string, err error) {
	head := make([]byte, 8)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", "", "", err
	}
	head = head[:n]
	if bytes.HasPrefix(head, []byte(qcow2Magic)) {
		return dataQcow2, "", "a qcow2 image", nil
	}
	comp, isTar, err := sniffTar(f)
	if err != nil {
		return "", "", "", err
	}
	if isTar {
		if comp == "" {
			return dataTar, "", "a tar archive", nil
		}
		return dataTar, comp, "a " + comp + "-compressed tar archive", nil
	}
	if comp != "" {
		return "", "", "", fmt.Errorf("the image is %s-compressed data that is not a tar archive: %w", comp, ErrUnsupportedImage)
	}
	return dataDisk, "", "a disk or filesystem image", nil
}

// diskLayout says where a disk's root filesystem is.
type diskLayout struct {
	fsType string
	offset int64  // bytes from the start of the disk
	size   int64  // bytes
	scheme string // "" (bare filesystem), "mbr" or "gpt"
	part   int    // partition number, 0 for a bare filesystem
}

func (l diskLayout) String() string {
	if l.part == 0 {
		return "bare " + l.fsType + " filesystem"
	}
	return fmt.Sprintf("%s on %s partition %d", l.fsType, strings.ToUpper(l.scheme), l.part)
}

// probeDisk finds the root filesystem of a raw disk of size bytes: a GPT
// or MBR partitioned disk (the partition rootPart names, or else the
// largest one holding a supported filesystem, preferring those whose type
// says Linux root, then Linux data), or a bare filesystem. It refuses a
// filesystem whose superblock claims more bytes than it has (a truncated
// image). Errors wrap ErrUnsupportedImage or ErrInvalidImage.
func probeDisk(r io.ReaderAt, size int64, rootPart string) (diskLayout, error) {
	if size < 2048 {
		return diskLayout{}, fmt.Errorf("only %d bytes: %w", size, ErrUnsupportedImage)
	}
	var t *partitionTable
	var err error
	for _, ss := range []int64{512, 4096} {
		if t, err = readGPT(r, size, ss); t != nil || err != nil {
			break
		}
	}
	if err != nil {
		return diskLayout{}, err
	}
	if t == nil {
		if fst := fsTypeAt(r); fst != "" {
			l := diskLayout{fsType: fst, size: size}
			return l, checkFSSize(r, l)
		}
		for _, m := range notFSMagics {
			if b, err := readAt(r, m.off, len(m.magic)); err == nil && bytes.Equal(b, m.magic) {
				return diskLayout{}, fmt.Errorf("it is %s (convert it to raw or qcow2): %w", m.what, ErrUnsupportedImage)
			}
		}
		if t, err = readMBR(r, size); err != nil {
			return diskLayout{}, err
		}
		if t == nil {
			return diskLayout{}, fmt.Errorf("no %s filesystem, partition table, qcow2 image or tar archive found: %w",
				supportedFSList, ErrUnsupportedImage)
		}
	}
	return chooseRoot(r, t, rootPart)
}

func chooseRoot(r io.ReaderAt, t *partitionTable, rootPart string) (diskLayout, error) {
	type cand struct {
		p  partition
		fs string
	}
	var cands []cand
	var all []string
	for _, p := range t.parts {
		c := cand{p, fsTypeAt(io.NewSectionReader(r, p.start, p.size))}
		cands = append(cands, c)
		d := fmt.Sprintf("%d (type %s, %s", p.number, p.typ, humanSize(p.size))
		if c.fs != "" {
			d += ", " + c.fs
		}
		all = append(all, d+")")
	}
	list := strings.Join(all, ", ")
	if list == "" {
		list = "none"
	}
	var pick *cand
	if rootPart != "" {
		n, err := strconv.Atoi(strings.TrimSpace(rootPart))
		if err != nil || n < 1 {
			return diskLayout{}, fmt.Errorf("image property %s=%q is not a partition number: %w", RootPartitionProperty, rootPart, ErrInvalidImage)
		}
		i := slices.IndexFunc(cands, func(c cand) bool { return c.p.number == n })
		if i < 0 {
			return diskLayout{}, fmt.Errorf("image property %s=%d: the %s disk has no partition %d (partitions: %s): %w",
				RootPartitionProperty, n, strings.ToUpper(t.scheme), n, list, ErrInvalidImage)
		}
		if cands[i].fs == "" {
			return diskLayout{}, fmt.Errorf("image property %s=%d: partition %d holds no %s filesystem (partitions: %s): %w",
				RootPartitionProperty, n, n, supportedFSList, list, ErrUnsupportedImage)
		}
		pick = &cands[i]
	} else {
		for i := range cands {
			c := &cands[i]
			if c.fs == "" {
				continue
			}
			if pick == nil || cmp.Or(cmp.Compare(c.p.hint, pick.p.hint), cmp.Compare(c.p.size, pick.p.size)) > 0 {
				pick = c
			}
		}
		if pick == nil {
			return diskLayout{}, fmt.Errorf("%s partitioned disk: no partition holds an %s filesystem (partitions: %s): %w",
				strings.ToUpper(t.scheme), supportedFSList, list, ErrUnsupportedImage)
		}
	}
	l := diskLayout{fsType: pick.fs, offset: pick.p.start, size: pick.p.size, scheme: t.scheme, part: pick.p.number}
	return l, checkFSSize(io.NewSectionReader(r, l.offset, l.size), l)
}

// fsTypeAt names the filesystem whose superblock is at the start of r, or
// returns "".
func fsTypeAt(r io.ReaderAt) string {
	for _, m := range fsMagics {
		if b, err := readAt(r, m.off, len(m.magic)); err == nil && bytes.Equal(b, m.magic) {
			return m.fsType
		}
	}
	return ""
}

// fsSize returns the size in bytes the filesystem's superblock claims.
func fsSize(r io.ReaderAt, fsType string) (int64, error) {
	le, be := binary.LittleEndian, binary.BigEndian
	switch fsType {
	case "ext4":
		sb, err := readAt(r, 1024, 0x158)
		if err != nil {
			return 0, err
		}
		blocks := uint64(le.Uint32(sb[4:]))
		if le.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
			blocks |= uint64(le.Uint32(sb[0x150:])) << 32
		}
		logBS := le.Uint32(sb[24:])
		if logBS > 6 {
			return 0, invalidf("ext4 superblock: block size 2^%d", 10+logBS)
		}
		return mulSize(blocks, 1024<<logBS)
	case "xfs":
		sb, err := readAt(r, 0, 16)
		if err != nil {
			return 0, err
		}
		return mulSize(be.Uint64(sb[8:]), uint64(be.Uint32(sb[4:])))
	case "btrfs":
		sb, err := readAt(r, 0x10000+0xd1, 8) // dev_item.total_bytes: this device's size
		if err != nil {
			return 0, err
		}
		return mulSize(le.Uint64(sb), 1)
	case "squashfs":
		sb, err := readAt(r, 40, 8) // bytes_used
		if err != nil {
			return 0, err
		}
		return mulSize(le.Uint64(sb), 1)
	}
	return 0, fmt.Errorf("unknown filesystem %q", fsType)
}

func mulSize(a, b uint64) (int64, error) {
	if b != 0 && a > (1<<62)/b {
		return 0, invalidf("filesystem size %d*%d overflows", a, b)
	}
	return int64(a * b), nil
}

// checkFSSize refuses a filesystem that claims more bytes than l holds.
func checkFSSize(r io.ReaderAt, l diskLayout) error {
	need, err := fsSize(r, l.fsType)
	if err != nil {
		return fmt.Errorf("%s: %w", l, err)
	}
	if need > l.size {
		return fmt.Errorf("%s needs %d bytes but the image holds only %d: truncated: %w", l, need, l.size, ErrInvalidImage)
	}
	return nil
}

func humanSize(n int64) string {
	switch {
	case n >= 10<<30:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 10<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 10<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
