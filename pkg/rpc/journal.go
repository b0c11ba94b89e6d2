package rpc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Journal durably records casts the agent has taken but not finished, so
// that a message is acknowledged to the broker only once it cannot be lost:
// a crash after the ack replays the work on the next start. oslo acks before
// dispatch (at-most-once); the journal makes lxc-agent at-least-once for casts.
type Journal struct {
	dir string
}

// JournalEntry is one recorded, unfinished message.
type JournalEntry struct {
	ID       string
	Body     []byte
	Recorded time.Time
}

// OpenJournal creates dir if needed.
func OpenJournal(dir string) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	return &Journal{dir: dir}, nil
}

func (j *Journal) path(id string) string { return filepath.Join(j.dir, id+".msg") }

func validJournalID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Record writes body under id and makes it durable (file and directory
// fsync) before returning.
func (j *Journal) Record(id string, body []byte) error {
	if !validJournalID(id) {
		return fmt.Errorf("journal record: invalid id %q", id)
	}
	if err := WriteFileAtomic(j.path(id), body, 0o600); err != nil {
		return fmt.Errorf("journal record %s: %w", id, err)
	}
	return nil
}

// Done forgets id. A missing entry is not an error.
func (j *Journal) Done(id string) error {
	if err := os.Remove(j.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("journal done %s: %w", id, err)
	}
	return nil
}

// Pending lists unfinished entries, oldest first.
func (j *Journal) Pending() ([]JournalEntry, error) {
	des, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("journal pending: %w", err)
	}
	var out []JournalEntry
	for _, de := range des {
		name := de.Name()
		id, ok := strings.CutSuffix(name, ".msg")
		if !ok {
			if strings.HasSuffix(name, ".tmp") { // a record torn by a crash: never acked
				_ = os.Remove(filepath.Join(j.dir, name))
			}
			continue
		}
		body, err := os.ReadFile(filepath.Join(j.dir, name))
		if err != nil {
			return nil, fmt.Errorf("journal pending: %w", err)
		}
		info, err := de.Info()
		if err != nil {
			return nil, fmt.Errorf("journal pending: %w", err)
		}
		out = append(out, JournalEntry{ID: id, Body: body, Recorded: info.ModTime()})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Recorded.Before(out[b].Recorded) })
	return out, nil
}

// WriteFileAtomic writes data to path through a temporary file, fsyncs it,
// renames it into place and fsyncs the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if tmp != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	tmp = nil
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
