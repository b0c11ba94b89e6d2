package golxc

import (
	"bufio"
	"io"
	"os"
	"strings"
)

// maxLogLines is how many liblxc ERROR lines an error message carries.
const maxLogLines = 8

// logMark returns the current size of a log file (0 if absent), to read
// only what an operation adds.
func logMark(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// errorLinesSince returns the last maxLogLines ERROR lines written to the
// liblxc log at path after offset off. If the file shrank (rotated or
// truncated), it reads from the start.
func errorLinesSince(path string, off int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < off {
		off = 0
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, " ERROR ") {
			continue
		}
		lines = append(lines, trimLogLine(l))
		if len(lines) > maxLogLines {
			lines = lines[1:]
		}
	}
	return lines
}

// trimLogLine drops the "<prog> <name> <timestamp> " prefix of a liblxc log
// line, keeping "ERROR <module> - <file>:<func>:<line> - <message>".
func trimLogLine(l string) string {
	if i := strings.Index(l, " ERROR "); i >= 0 {
		l = l[i+1:]
	}
	return strings.TrimSpace(l)
}

// logSuffix formats log lines for appending to an error message.
func logSuffix(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return "; lxc log: " + strings.Join(lines, " | ")
}
