package rootfs

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ReadMeta reads the metadata Cache keeps for image id in cacheDir (the
// file <cacheDir>/<id>.json, next to the image data <cacheDir>/<id>), for
// callers that hold an image path but not the ImageMeta Fetch returned. A
// missing file is an error wrapping fs.ErrNotExist; a file that does not
// parse or names another image wraps ErrInvalidImage.
func ReadMeta(cacheDir, id string) (ImageMeta, error) {
	if err := ValidateID(id); err != nil {
		return ImageMeta{}, err
	}
	p := filepath.Join(cacheDir, id+".json")
	b, err := os.ReadFile(p)
	if err != nil {
		return ImageMeta{}, fmt.Errorf("image %s metadata: %w", id, err)
	}
	var m ImageMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return ImageMeta{}, fmt.Errorf("image %s metadata %s: %v: %w", id, p, err, ErrInvalidImage)
	}
	if m.ID != id {
		return ImageMeta{}, fmt.Errorf("image %s metadata %s names image %q: %w", id, p, m.ID, ErrInvalidImage)
	}
	return m, nil
}
