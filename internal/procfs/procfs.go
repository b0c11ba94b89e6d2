// Package procfs reads the few /proc facts the agent, its backends and its
// tests need: a process's state, parent, group and start time, and mountinfo
// field unescaping.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// UserHZ is the unit of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const UserHZ = 100

// ErrMalformed: a /proc file did not have the expected shape.
var ErrMalformed = errors.New("malformed /proc data")

// Stat is the part of /proc/<pid>/stat callers use.
type Stat struct {
	State byte
	PPID  int
	PGID  int
	// StartTicks is field 22, the start time in clock ticks after boot:
	// with the pid it identifies a process across pid reuse.
	StartTicks uint64
}

// ReadStat parses /proc/<pid>/stat; the error wraps fs.ErrNotExist when
// there is no such process.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	// pid (comm) state ppid pgrp ...; comm may hold spaces and ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %w", pid, ErrMalformed)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %w", pid, ErrMalformed)
	}
	st := Stat{State: f[0][0]}
	st.PPID, _ = strconv.Atoi(f[1])
	st.PGID, _ = strconv.Atoi(f[2])
	if st.StartTicks, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return Stat{}, fmt.Errorf("/proc/%d/stat: starttime: %w", pid, ErrMalformed)
	}
	return st, nil
}

// Uptime is how long ago process pid started, in whole seconds.
func Uptime(pid int) (int64, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return 0, err
	}
	u, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	uf := strings.Fields(string(u))
	if len(uf) == 0 {
		return 0, fmt.Errorf("/proc/uptime: %w", ErrMalformed)
	}
	up, err := strconv.ParseFloat(uf[0], 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/uptime: %w", ErrMalformed)
	}
	return max(int64(up-float64(st.StartTicks)/UserHZ), 0), nil
}

// UnescapeMountinfo undoes the kernel's \ooo escapes (\040 for a space,
// \011, \012, \134) of /proc/*/mountinfo fields.
func UnescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
