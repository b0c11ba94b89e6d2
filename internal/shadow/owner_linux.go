package shadow

import (
	"io/fs"
	"os"
	"syscall"
)

func copyOwner(root *os.Root, name string, st fs.FileInfo) error {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return root.Lchown(name, int(s.Uid), int(s.Gid))
	}
	return nil
}
