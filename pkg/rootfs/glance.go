package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
)

// GlanceSource reads images from the Glance v2 API with the user's token.
type GlanceSource struct {
	// Endpoint is Glance's public/internal URL from the service catalog,
	// e.g. "http://controller:9292" (a trailing "/" or "/v2" is accepted).
	Endpoint string
	// Client sends the requests; nil means http.DefaultClient. It should
	// have no overall Timeout: image downloads are long and are bounded by
	// the caller's context instead.
	Client *http.Client
}

// serviceClient builds a per-call client: the token differs per request and
// a ProviderClient is a few small allocations.
func (g GlanceSource) serviceClient(token string) (*gophercloud.ServiceClient, error) {
	base := strings.TrimRight(g.Endpoint, "/")
	base = strings.TrimSuffix(base, "/v2")
	if base == "" {
		return nil, errors.New("glance: empty endpoint")
	}
	hc := g.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	pc := &gophercloud.ProviderClient{HTTPClient: *hc, TokenID: token}
	pc.UserAgent.Prepend("lxc-agent")
	return &gophercloud.ServiceClient{
		ProviderClient: pc,
		Endpoint:       base + "/",
		// images.Get and imagedata.Download append "images/<id>[/file]".
		ResourceBase: base + "/v2/",
		Type:         "image",
	}, nil
}

// Meta implements Source with GET /v2/images/{id}.
func (g GlanceSource) Meta(ctx context.Context, id, token string) (ImageMeta, error) {
	if err := ValidateID(id); err != nil {
		return ImageMeta{}, err
	}
	sc, err := g.serviceClient(token)
	if err != nil {
		return ImageMeta{}, err
	}
	img, err := images.Get(ctx, sc, id).Extract()
	if err != nil {
		return ImageMeta{}, glanceErr(id, "get image", err)
	}
	m := ImageMeta{
		ID:              img.ID,
		Name:            img.Name,
		DiskFormat:      img.DiskFormat,
		ContainerFormat: img.ContainerFormat,
		Checksum:        img.Checksum,
		Size:            img.SizeBytes,
		Status:          string(img.Status),
		Properties:      map[string]string{},
	}
	for k, v := range img.Properties {
		var s string
		switch v := v.(type) {
		case nil:
			continue
		case string:
			s = v
		default:
			b, err := json.Marshal(v)
			if err != nil {
				continue
			}
			s = string(b)
		}
		switch k {
		case "os_hash_algo":
			m.HashAlgo = s
		case "os_hash_value":
			m.HashValue = s
		default:
			m.Properties[k] = s
		}
	}
	if m.ID == "" {
		m.ID = id
	}
	if m.ID != id {
		return ImageMeta{}, fmt.Errorf("glance: asked for image %s, got %s: %w", id, m.ID, ErrInvalidImage)
	}
	return m, nil
}

// Open implements Source with GET /v2/images/{id}/file.
func (g GlanceSource) Open(ctx context.Context, id, token string) (io.ReadCloser, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	sc, err := g.serviceClient(token)
	if err != nil {
		return nil, err
	}
	body, err := imagedata.Download(ctx, sc, id).Extract()
	if err != nil {
		return nil, glanceErr(id, "download image", err)
	}
	return body, nil
}

func glanceErr(id, op string, err error) error {
	switch {
	case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return fmt.Errorf("glance: %s %s: %w: %w", op, id, ErrImageNotFound, err)
	case gophercloud.ResponseCodeIs(err, http.StatusNoContent):
		// Glance answers 204 to a download of an image without data.
		return fmt.Errorf("glance: %s %s: image has no data: %w: %w", op, id, ErrInvalidImage, err)
	}
	return fmt.Errorf("glance: %s %s: %w", op, id, err)
}
