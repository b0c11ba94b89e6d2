package rootfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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

// Signatures of formats that are not a bare filesystem, for the error message.
var notFSMagics = []struct {
	what  string
	off   int64
	magic []byte
}{
	{"a qcow2 image (convert it to raw)", 0, []byte("QFI\xfb")},
	{"a VMDK image", 0, []byte("KDMV")},
	{"a VHDX image", 0, []byte("vhdxfile")},
	{"a GPT-partitioned disk image (only bare filesystems are supported)", 512, []byte("EFI PART")},
	{"an ISO 9660 image", 0x8001, []byte("CD001")},
	{"an MBR-partitioned disk image (only bare filesystems are supported)", 510, []byte{0x55, 0xAA}},
}

// detectFS reads the image's superblock area and names the filesystem type
// to mount it with. Anything else is an error wrapping ErrUnsupportedImage.
func detectFS(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("image %s is not a regular file: %w", path, ErrInvalidImage)
	}
	at := func(off int64, n int) []byte {
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			return nil
		}
		return b
	}
	for _, m := range fsMagics {
		if b := at(m.off, len(m.magic)); b != nil && bytes.Equal(b, m.magic) {
			return m.fsType, nil
		}
	}
	// ReadAt errors other than EOF would have hidden a magic: report them.
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	what := "no ext2/3/4, xfs, btrfs or squashfs filesystem found"
	for _, m := range notFSMagics {
		if b := at(m.off, len(m.magic)); b != nil && bytes.Equal(b, m.magic) {
			what = "it is " + m.what
			break
		}
	}
	if fi.Size() < 2048 {
		what = fmt.Sprintf("only %d bytes", fi.Size())
	}
	return "", fmt.Errorf("image %s: %s: %w", path, what, ErrUnsupportedImage)
}
