package rootfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

const qcow2Magic = "QFI\xfb"

// qcow2 header extension types (docs/interop/qcow2.txt).
const (
	qcow2ExtEnd           = 0x00000000
	qcow2ExtBackingFormat = 0xe2792aca
	qcow2ExtDataFile      = 0x44415441
	qcow2ExtCrypto        = 0x0537be77
)

// qcow2 incompatible feature bits.
const (
	qcow2IncompatDirty       = 1 << 0
	qcow2IncompatCorrupt     = 1 << 1
	qcow2IncompatDataFile    = 1 << 2
	qcow2IncompatCompression = 1 << 3
	qcow2IncompatExtL2       = 1 << 4
	qcow2IncompatKnown       = qcow2IncompatDirty | qcow2IncompatCorrupt | qcow2IncompatDataFile |
		qcow2IncompatCompression | qcow2IncompatExtL2
)

const (
	qcow2MaxL1Bytes = 32 << 20 // QEMU's own limit (QCOW_MAX_L1_SIZE)
	qcow2OffsetMask = 0x00fffffffffffe00
	qcow2Compressed = 1 << 62
)

// qcow2Info is what checkQcow2 learned from the header.
type qcow2Info struct {
	version     uint32
	clusterSize int64
	virtualSize uint64
}

// checkQcow2 parses the qcow2 header of f itself, before any QEMU tool
// opens it, and refuses images QEMU would make the host read other files
// for: a backing file, or an external data file (ErrUnsafeImage). It also
// refuses encrypted images and unknown incompatible features
// (ErrUnsupportedImage), and images marked corrupt or whose metadata
// tables point past the end of the file, i.e. truncated (ErrInvalidImage).
// The L1 and L2 tables are walked, so the cost is one read per L2 table.
func checkQcow2(f *os.File) (qcow2Info, error) {
	fi, err := f.Stat()
	if err != nil {
		return qcow2Info{}, err
	}
	size := fi.Size()
	hdr := make([]byte, 104)
	n, _ := f.ReadAt(hdr, 0)
	if n < 72 || string(hdr[:4]) != qcow2Magic {
		return qcow2Info{}, invalidf("qcow2 header truncated or missing (%d bytes)", n)
	}
	be := binary.BigEndian
	info := qcow2Info{version: be.Uint32(hdr[4:]), virtualSize: be.Uint64(hdr[24:])}
	if info.version != 2 && info.version != 3 {
		return info, fmt.Errorf("qcow2 version %d: %w", info.version, ErrUnsupportedImage)
	}
	if info.version == 3 && n < 104 {
		return info, invalidf("qcow2 v3 header truncated (%d bytes)", n)
	}
	cbits := be.Uint32(hdr[20:])
	if cbits < 9 || cbits > 21 {
		return info, invalidf("qcow2 cluster_bits %d", cbits)
	}
	info.clusterSize = 1 << cbits

	// Refused before anything else: these make QEMU open host files.
	if boff, bsize := be.Uint64(hdr[8:]), be.Uint32(hdr[16:]); boff != 0 || bsize != 0 {
		name := "(unreadable name)"
		if bsize <= 4096 && boff < uint64(size) {
			b := make([]byte, bsize)
			if n, _ := f.ReadAt(b, int64(boff)); n > 0 {
				name = strings.ToValidUTF8(string(b[:n]), "?")
			}
		}
		return info, fmt.Errorf("qcow2 image has a backing file %q: refused: %w", name, ErrUnsafeImage)
	}
	var incompat uint64
	extStart := int64(72)
	if info.version == 3 {
		incompat = be.Uint64(hdr[72:])
		hlen := be.Uint32(hdr[100:])
		if hlen < 104 || int64(hlen) > info.clusterSize {
			return info, invalidf("qcow2 header_length %d", hlen)
		}
		extStart = int64(hlen)
	}
	dataFile, exts, err := qcow2Extensions(f, extStart, min(info.clusterSize, size))
	if err != nil {
		return info, err
	}
	if dataFile != "" {
		return info, fmt.Errorf("qcow2 image has an external data file %q: refused: %w", dataFile, ErrUnsafeImage)
	}
	if incompat&qcow2IncompatDataFile != 0 {
		return info, fmt.Errorf("qcow2 image uses an external data file: refused: %w", ErrUnsafeImage)
	}
	if incompat&qcow2IncompatCorrupt != 0 {
		return info, invalidf("qcow2 image is marked corrupt")
	}
	if unk := incompat &^ qcow2IncompatKnown; unk != 0 {
		return info, fmt.Errorf("qcow2 image has unknown incompatible features %#x: %w", unk, ErrUnsupportedImage)
	}
	if be.Uint32(hdr[32:]) != 0 || exts[qcow2ExtCrypto] {
		return info, fmt.Errorf("qcow2 image is encrypted: %w", ErrUnsupportedImage)
	}

	// The metadata must lie inside the file: a truncated image fails here.
	cs := info.clusterSize
	l1Size, l1Off := int64(be.Uint32(hdr[36:])), int64(be.Uint64(hdr[40:]))
	rtOff, rtClusters := int64(be.Uint64(hdr[48:])), int64(be.Uint32(hdr[56:]))
	if l1Size*8 > qcow2MaxL1Bytes {
		return info, invalidf("qcow2 L1 table of %d entries", l1Size)
	}
	if rtOff <= 0 || rtOff%cs != 0 || rtClusters > 1<<20 || rtOff+rtClusters*cs > size {
		return info, invalidf("qcow2 refcount table (offset %d, %d clusters) lies beyond the end of the file (%d bytes): truncated", rtOff, rtClusters, size)
	}
	if l1Size == 0 {
		return info, nil
	}
	if l1Off <= 0 || l1Off%cs != 0 || l1Off+l1Size*8 > size {
		return info, invalidf("qcow2 L1 table (offset %d, %d entries) lies beyond the end of the file (%d bytes): truncated", l1Off, l1Size, size)
	}
	l1 := make([]byte, l1Size*8)
	if _, err := f.ReadAt(l1, l1Off); err != nil {
		return info, fmt.Errorf("read qcow2 L1 table: %w", err)
	}
	entSize := int64(8)
	if incompat&qcow2IncompatExtL2 != 0 {
		entSize = 16
	}
	l2 := make([]byte, cs)
	for i := range l1Size {
		l2Off := int64(be.Uint64(l1[i*8:]) & qcow2OffsetMask)
		if l2Off == 0 {
			continue
		}
		if l2Off%cs != 0 || l2Off+cs > size {
			return info, invalidf("qcow2 L2 table %d at offset %d lies beyond the end of the file (%d bytes): truncated", i, l2Off, size)
		}
		if _, err := f.ReadAt(l2, l2Off); err != nil {
			return info, fmt.Errorf("read qcow2 L2 table: %w", err)
		}
		for j := int64(0); j+entSize <= cs; j += entSize {
			e := be.Uint64(l2[j:])
			var off int64
			if e&qcow2Compressed != 0 {
				x := 62 - (cbits - 8)
				off = int64(e & (1<<x - 1))
			} else {
				off = int64(e & qcow2OffsetMask)
			}
			if off >= size {
				return info, invalidf("qcow2 data cluster at offset %d lies beyond the end of the file (%d bytes): truncated", off, size)
			}
		}
	}
	return info, nil
}

// qcow2Extensions walks the header extensions in [start, end) and returns
// the external data file name (if any) and the extension types seen.
func qcow2Extensions(f *os.File, start, end int64) (string, map[uint32]bool, error) {
	seen := map[uint32]bool{}
	if end <= start {
		return "", seen, nil
	}
	buf := make([]byte, end-start)
	n, _ := f.ReadAt(buf, start)
	buf = buf[:n]
	be := binary.BigEndian
	var dataFile string
	for off := 0; ; {
		if off+8 > len(buf) {
			return "", nil, invalidf("qcow2 header extensions run past the first cluster")
		}
		typ, l := be.Uint32(buf[off:]), int(be.Uint32(buf[off+4:]))
		if typ == qcow2ExtEnd {
			return dataFile, seen, nil
		}
		if l > len(buf)-off-8 {
			return "", nil, invalidf("qcow2 header extension %#x of %d bytes runs past the first cluster", typ, l)
		}
		seen[typ] = true
		if typ == qcow2ExtDataFile {
			dataFile = strings.ToValidUTF8(string(bytes.TrimRight(buf[off+8:off+8+l], "\x00")), "?")
			if dataFile == "" {
				dataFile = "(empty name)"
			}
		}
		off += 8 + (l+7)&^7
	}
}

// qemuImgCheck is the second opinion: qemu-img info, which opens the
// image without its backing file, must agree that it is a qcow2 image
// without backing or data file. Skipped if qemu-img is not installed. Only
// called after checkQcow2 accepted the image.
func qemuImgCheck(ctx context.Context, path string) error {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "info", "--output=json", "-f", "qcow2", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return invalidf("qemu-img info: %s", strings.TrimSpace(string(ee.Stderr)))
		}
		return fmt.Errorf("qemu-img info: %w", err)
	}
	var info struct {
		Format          string `json:"format"`
		BackingFilename string `json:"backing-filename"`
		FormatSpecific  struct {
			Data struct {
				DataFile string `json:"data-file"`
				Corrupt  bool   `json:"corrupt"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("qemu-img info output: %w", err)
	}
	switch {
	case info.Format != "qcow2":
		return invalidf("qemu-img says the image is %q, not qcow2", info.Format)
	case info.BackingFilename != "":
		return fmt.Errorf("qcow2 image has a backing file %q: refused: %w", info.BackingFilename, ErrUnsafeImage)
	case info.FormatSpecific.Data.DataFile != "":
		return fmt.Errorf("qcow2 image has an external data file %q: refused: %w", info.FormatSpecific.Data.DataFile, ErrUnsafeImage)
	case info.FormatSpecific.Data.Corrupt:
		return invalidf("qcow2 image is marked corrupt")
	}
	return nil
}
