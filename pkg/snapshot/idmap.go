package snapshot

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
)

// overflowID is the owner of files whose host ids the map does not cover
// (what the container saw them as).
const overflowID = 65534

// WriteTarUnshifted is WriteTar for the root filesystem of an unprivileged
// instance, whose files are owned by host ids (100000… under the map
// 0:100000:65536): every owner, and the root id of file capabilities, is
// mapped back to the container's id, so that the image is owned like any
// other (root by 0) and boots privileged or unprivileged alike. Host ids
// outside maps become 65534.
func WriteTarUnshifted(ctx context.Context, root string, w io.Writer, maps []driver.IDMap) (int, error) {
	if err := idmap.Validate(maps); err != nil {
		return 0, fmt.Errorf("snapshot %s: %w", root, err)
	}
	back := func(kind byte, id int) int {
		if c, ok := idmap.ContainerID(maps, kind, id); ok {
			return c
		}
		return overflowID
	}
	return writeTar(ctx, root, w, func(h *tar.Header) {
		h.Uid, h.Gid = back('u', h.Uid), back('g', h.Gid)
		const key = "SCHILY.xattr.security.capability"
		if v, ok := h.PAXRecords[key]; ok && len(v) == 24 && v[3] == 3 {
			// A v3 capability (little-endian magic, revision in the top
			// byte) names its root: the container's in the image.
			b := []byte(v)
			binary.LittleEndian.PutUint32(b[20:], uint32(back('u', int(binary.LittleEndian.Uint32(b[20:])))))
			h.PAXRecords[key] = string(b)
		}
	})
}

// WriteExt4Unshifted is WriteExt4 for the root filesystem of an
// unprivileged instance: the tree is first copied into tmpDir with its
// owners mapped back to the container's ids (idmap.UnshiftedCopy), since
// mkfs.ext4 -d copies owners as it finds them. It needs the tree's size
// again in tmpDir, for the time of the capture.
func WriteExt4Unshifted(ctx context.Context, root, tmpDir string, w io.Writer, maps []driver.IDMap) error {
	tmp, err := os.MkdirTemp(tmpDir, ".snapshot-tree-*")
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree")
	if _, err := idmap.UnshiftedCopy(ctx, root, tree, maps); err != nil {
		return fmt.Errorf("snapshot %s: %w", root, err)
	}
	return WriteExt4(ctx, tree, tmpDir, w)
}
