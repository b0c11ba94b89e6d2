package snapshot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// LocalDir stores snapshots in the agent's local image directory (the
// standalone image store): the image id names the file, so the snapshot
// boots again with --image <id>.
type LocalDir struct{ Dir string }

// Upload writes body to <Dir>/<imageID> through a temporary file.
func (l LocalDir) Upload(ctx context.Context, imageID string, body io.Reader) error {
	if imageID == "" || strings.ContainsAny(imageID, "/\x00") || strings.HasPrefix(imageID, ".") {
		return fmt.Errorf("snapshot: invalid image id %q", imageID)
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	dst := filepath.Join(l.Dir, imageID)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot: image %s already exists in %s", imageID, l.Dir)
	}
	tmp, err := os.CreateTemp(l.Dir, "."+imageID+".*.tmp")
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, ctxReader{ctx, body}); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
