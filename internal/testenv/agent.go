package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildAgent builds the lxc-agent binary into a temporary directory for a
// test package's TestMain; remove deletes it.
func BuildAgent() (bin string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "lxc-agent-bin")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "lxc-agent")
	build := exec.Command("go", "build", "-o", bin, "github.com/lxc-agent/lxc-agent/cmd/lxc-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build lxc-agent: %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}
