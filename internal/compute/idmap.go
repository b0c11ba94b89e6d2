package compute

import (
	"os"
	"syscall"
)

// chownLike gives name, inside root, the owner and group of ref. Files the
// agent creates in an unprivileged container's rootfs must belong to the
// container's root (a host id such as 100000), not to the host's.
func chownLike(root *os.Root, name, ref string) error {
	fi, err := root.Lstat(ref)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return root.Lchown(name, int(st.Uid), int(st.Gid))
}
