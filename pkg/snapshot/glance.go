package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
)

// ErrImageNotQueued: the image nova passed is not waiting for data (deleted,
// or already uploaded).
var ErrImageNotQueued = errors.New("image is not queued for upload")

// Glance uploads snapshots to a Glance v2 endpoint.
type Glance struct {
	Endpoint string
	Client   *http.Client
}

func (g Glance) client(token string) *gophercloud.ServiceClient {
	hc := g.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	pc := &gophercloud.ProviderClient{HTTPClient: *hc, TokenID: token}
	ep := strings.TrimRight(g.Endpoint, "/")
	ep = strings.TrimSuffix(ep, "/v2")
	return &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: ep + "/", ResourceBase: ep + "/v2/", Type: "image"}
}

// Upload is what nova-compute does for a snapshot: set the formats and
// nova's snapshot properties on the queued image, then stream the data, after
// which Glance turns the image active.
func (g Glance) Upload(ctx context.Context, token, imageID string, meta UploadMeta, body io.Reader) error {
	c := g.client(token)
	img, err := images.Get(ctx, c, imageID).Extract()
	if err != nil {
		return fmt.Errorf("glance image %s: %w", imageID, err)
	}
	if img.Status != images.ImageStatusQueued {
		return fmt.Errorf("glance image %s is %s: %w", imageID, img.Status, ErrImageNotQueued)
	}
	patch := images.UpdateOpts{
		images.UpdateImageProperty{Op: images.ReplaceOp, Name: "disk_format", Value: meta.DiskFormat},
		images.UpdateImageProperty{Op: images.ReplaceOp, Name: "container_format", Value: meta.ContainerFormat},
	}
	for k, v := range meta.Properties {
		op := images.AddOp
		if _, exists := img.Properties[k]; exists {
			op = images.ReplaceOp
		}
		patch = append(patch, images.UpdateImageProperty{Op: op, Name: k, Value: v})
	}
	if _, err := images.Update(ctx, c, imageID, patch).Extract(); err != nil {
		return fmt.Errorf("glance image %s: set formats: %w", imageID, err)
	}
	if err := imagedata.Upload(ctx, c, imageID, body).ExtractErr(); err != nil {
		return fmt.Errorf("glance image %s: upload: %w", imageID, err)
	}
	return nil
}

// UploadMeta is what the snapshot sets on the Glance image.
type UploadMeta struct {
	DiskFormat      string
	ContainerFormat string
	Properties      map[string]string
}
