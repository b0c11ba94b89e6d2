package rootfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/procfs"
)

// Names under baseDir that are never image ids (ids never start with '.').
const (
	stateDirName = ".state" // base records, FUSE export files, pid files
	tmpPrefix    = ".tmp-"  // .tmp-<id>-<random>: a tar being extracted
)

// Kinds of base.
const (
	baseMount = "mount" // a filesystem mounted read-only at <baseDir>/<id>
	baseTar   = "tar"   // a tarball extracted to the directory <baseDir>/<id>
)

// baseRecord is what Prepare persists about the base of one image, in
// <baseDir>/.state/<id>.json, so that Recover can release it after the
// agent was killed between two steps: it is written before each resource
// is created and updated once it exists, and removed only after everything
// it lists is released. The mount table stays the truth about what is in
// use; the record says what was made for it.
type baseRecord struct {
	Version int       `json:"version"`
	ImageID string    `json:"image_id"`
	Kind    string    `json:"kind"`   // baseMount or baseTar
	Format  string    `json:"format"` // raw, qcow2, root-tar (as found in the bytes)
	Image   string    `json:"image"`  // the image file Prepare read
	BootID  string    `json:"boot_id"`
	Created time.Time `json:"created"`

	// Mount bases.
	Export *exportRecord `json:"export,omitempty"` // qemu-storage-daemon FUSE export of a qcow2
	NBD    string        `json:"nbd,omitempty"`    // /dev/nbdN serving a qcow2
	Loop   *loopRecord   `json:"loop,omitempty"`
	FSType string        `json:"fstype,omitempty"`
	Layout string        `json:"layout,omitempty"` // e.g. "ext4 on GPT partition 2"

	// Tar bases.
	Temp     string `json:"temp,omitempty"` // extraction directory while extracting
	Complete bool   `json:"complete,omitempty"`
	// DiskBytes is the space the extracted base takes (allocated blocks).
	DiskBytes int64 `json:"disk_bytes,omitempty"`
}

// exportRecord identifies a qemu-storage-daemon process: pid, its start
// time (field 22 of /proc/<pid>/stat) and the export mountpoint in its
// command line. Never a process name.
type exportRecord struct {
	Mountpoint string `json:"mountpoint"`
	PIDFile    string `json:"pidfile"`
	PID        int    `json:"pid,omitempty"`
	StartTime  uint64 `json:"start_time,omitempty"`
}

type loopRecord struct {
	Device    string `json:"device,omitempty"` // empty until attached
	Backing   string `json:"backing"`
	Offset    int64  `json:"offset"`
	SizeLimit int64  `json:"size_limit"`
}

const recordVersion = 1

func stateDir(baseDir string) string       { return filepath.Join(baseDir, stateDirName) }
func recordPath(baseDir, id string) string { return filepath.Join(baseDir, stateDirName, id+".json") }
func exportFilePath(baseDir, id string) string {
	return filepath.Join(baseDir, stateDirName, id+".fuse")
}
func pidFilePath(baseDir, id string) string { return filepath.Join(baseDir, stateDirName, id+".pid") }

// saveRecord writes r atomically (temporary file + rename). It does not
// fsync: the record must survive a kill of the agent, which the page cache
// does; after a host crash everything it lists is gone anyway.
func saveRecord(baseDir string, r *baseRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(stateDir(baseDir), ".rec-*")
	if err != nil {
		return fmt.Errorf("save base record: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), recordPath(baseDir, r.ImageID))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("save base record: %w", err)
	}
	return nil
}

// loadRecord returns nil, nil if there is no record.
func loadRecord(baseDir, id string) (*baseRecord, error) {
	b, err := os.ReadFile(recordPath(baseDir, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r baseRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("base record %s: %w", recordPath(baseDir, id), err)
	}
	if r.ImageID != id {
		return nil, fmt.Errorf("base record %s names image %q", recordPath(baseDir, id), r.ImageID)
	}
	return &r, nil
}

func removeRecord(baseDir, id string) error {
	if err := os.Remove(recordPath(baseDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// recordIDs lists the image ids that have a record.
func recordIDs(baseDir string) []string {
	ents, _ := os.ReadDir(stateDir(baseDir))
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && ValidateID(id) == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

var bootIDOnce = sync.OnceValue(func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
})

// bootID identifies the running kernel's boot: records of another boot
// list devices and processes that no longer exist (and whose numbers may
// have been reused).
func bootID() string { return bootIDOnce() }

// procStat returns the state letter and start time (clock ticks after
// boot) of pid; ok is false if there is no such process.
func procStat(pid int) (state byte, start uint64, ok bool) {
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return 0, 0, false
	}
	return st.State, st.StartTicks, true
}

// procAlive reports whether pid exists and is not a zombie.
func procAlive(pid int) bool {
	st, _, ok := procStat(pid)
	return ok && st != 'Z' && st != 'X'
}

func procCmdline(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// allPIDs lists the processes in /proc.
func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// under reports whether p is dir or below it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}
