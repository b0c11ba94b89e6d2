package placement

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// provider is a resource provider as placement shows it (1.14+).
type provider struct {
	UUID               string `json:"uuid"`
	Name               string `json:"name"`
	Generation         int    `json:"generation"`
	ParentProviderUUID string `json:"parent_provider_uuid"`
	RootProviderUUID   string `json:"root_provider_uuid"`
}

func providerPath(uuid string, sub ...string) string {
	p := "resource_providers/" + url.PathEscape(uuid)
	for _, s := range sub {
		p += "/" + s
	}
	return p
}

// EnsureProvider makes sure the root resource provider uuid exists, creating
// it with name when absent, and returns its generation. Like nova it looks
// the provider's tree up first (GET /resource_providers?in_tree=, 1.14) and
// creates with POST /resource_providers (1.20). An existing provider is not
// renamed. If another provider already has the name the error wraps
// ErrNameConflict and says which uuid has it.
func (c *Client) EnsureProvider(ctx context.Context, uuid, name string) (int, error) {
	if uuid == "" {
		return 0, errors.New("placement: EnsureProvider: empty uuid")
	}
	if name == "" {
		name = uuid
	}
	var tree struct {
		Providers []provider `json:"resource_providers"`
	}
	q := url.Values{"in_tree": {uuid}}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "resource_providers?" + q.Encode(),
		mv: mvInTree, out: &tree, ok: []int{200}}); err != nil {
		return 0, fmt.Errorf("look up resource provider %s: %w", uuid, err)
	}
	for _, p := range tree.Providers {
		if p.UUID == uuid {
			if p.Name != name {
				c.log.Debug("resource provider exists under another name; not renaming",
					"provider", uuid, "name", p.Name, "want_name", name)
			}
			return p.Generation, nil
		}
	}

	var created provider
	_, err := c.do(ctx, request{method: http.MethodPost, path: "resource_providers", mv: mvCreateReturn,
		body: map[string]string{"uuid": uuid, "name": name}, out: &created, ok: []int{200, 201}})
	if err == nil {
		c.log.Info("created resource provider", "provider", uuid, "name", name, "generation", created.Generation)
		return created.Generation, nil
	}
	var pe *Error
	if !errors.As(err, &pe) || pe.StatusCode != http.StatusConflict {
		return 0, fmt.Errorf("create resource provider %s (%s): %w", uuid, name, err)
	}
	// 409: either the name is taken by another provider, or someone else
	// created this uuid since the GET. Placement says which only in the
	// text; before microversion 1.23 (nova uses 1.20 here) the answer has
	// no error code either, so supply it: this is not a generation
	// conflict.
	if pe.Code == "" && strings.HasPrefix(pe.Detail, "Conflicting resource provider") {
		pe.Code = CodeDuplicateName
	}
	if strings.HasPrefix(pe.Detail, "Conflicting resource provider name") {
		other := c.providerUUIDByName(ctx, name)
		if other == "" {
			other = "another uuid"
		}
		return 0, fmt.Errorf("%w: cannot create resource provider %s: the name %q belongs to %s "+
			"(delete that provider, e.g. `openstack resource provider delete %s`, or change the host name): %w",
			ErrNameConflict, uuid, name, other, other, err)
	}
	var p provider
	if _, gerr := c.do(ctx, request{method: http.MethodGet, path: providerPath(uuid), mv: mvInTree,
		out: &p, ok: []int{200}}); gerr != nil {
		return 0, fmt.Errorf("create resource provider %s (%s): %w; then reading it: %w", uuid, name, err, gerr)
	}
	c.log.Info("resource provider was created concurrently", "provider", uuid, "generation", p.Generation)
	return p.Generation, nil
}

// providerUUIDByName returns the uuid of the provider called name, or "".
func (c *Client) providerUUIDByName(ctx context.Context, name string) string {
	var list struct {
		Providers []provider `json:"resource_providers"`
	}
	q := url.Values{"name": {name}}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "resource_providers?" + q.Encode(),
		mv: mvInTree, out: &list, ok: []int{200}}); err != nil || len(list.Providers) == 0 {
		return ""
	}
	return list.Providers[0].UUID
}
