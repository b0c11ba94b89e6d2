package placement

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

type traitsBody struct {
	Generation int      `json:"resource_provider_generation"`
	Traits     []string `json:"traits"`
}

func (c *Client) providerTraits(ctx context.Context, uuid string) ([]string, int, error) {
	var b traitsBody
	if _, err := c.do(ctx, request{method: http.MethodGet, path: providerPath(uuid, "traits"),
		mv: mvTraits, out: &b, ok: []int{200}}); err != nil {
		return nil, 0, fmt.Errorf("get traits of %s: %w", uuid, err)
	}
	slices.Sort(b.Traits)
	return b.Traits, b.Generation, nil
}

// Traits returns the provider's traits, sorted
// (GET /resource_providers/{uuid}/traits, 1.6).
func (c *Client) Traits(ctx context.Context, uuid string) ([]string, error) {
	t, _, err := c.providerTraits(ctx, uuid)
	if t == nil && err == nil {
		t = []string{}
	}
	return t, err
}

// SetTraits makes the provider's traits exactly traits (duplicates are
// ignored). It reads the current traits and generation and, only when the
// sets differ, makes sure every trait exists (creating missing CUSTOM_ ones
// with PUT /traits/{name}; a missing standard trait is ErrUnknownTrait)
// and PUTs the set with the generation it read (1.6). On a generation
// conflict it reads again and retries, up to MaxAttempts attempts.
func (c *Client) SetTraits(ctx context.Context, uuid string, traits []string) error {
	want := append([]string{}, traits...) // never nil: placement wants a JSON array
	slices.Sort(want)
	want = slices.Compact(want)
	for _, t := range want {
		if !validName(t) {
			return fmt.Errorf("placement: invalid trait name %q", t)
		}
	}
	ensured := false
	var lastErr error
	for attempt := 1; attempt <= MaxAttempts; attempt++ {
		cur, gen, err := c.providerTraits(ctx, uuid)
		if err != nil {
			return err
		}
		if slices.Equal(cur, want) {
			c.log.Debug("traits unchanged", "provider", uuid, "generation", gen)
			return nil
		}
		if !ensured {
			if err := c.ensureTraits(ctx, want); err != nil {
				return err
			}
			ensured = true
		}
		var out traitsBody
		_, err = c.do(ctx, request{method: http.MethodPut, path: providerPath(uuid, "traits"), mv: mvTraits,
			body: traitsBody{Generation: gen, Traits: want}, out: &out, ok: []int{200}})
		if err == nil {
			c.log.Info("updated traits", "provider", uuid, "generation", out.Generation,
				"added", missing(want, cur), "removed", missing(cur, want))
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("set traits of %s: %w", uuid, err)
		}
		lastErr = err
		if attempt < MaxAttempts {
			c.log.Info("traits update conflict; refreshing", "provider", uuid, "generation", gen, "attempt", attempt, "err", err)
		}
	}
	return fmt.Errorf("set traits of %s: gave up after %d attempts: %w", uuid, MaxAttempts, lastErr)
}

// ensureTraits asks placement which of traits exist
// (GET /traits?name=in:a,b, 1.6) and creates the missing CUSTOM_ ones.
func (c *Client) ensureTraits(ctx context.Context, traits []string) error {
	if len(traits) == 0 {
		return nil
	}
	var b struct {
		Traits []string `json:"traits"`
	}
	q := url.Values{"name": {"in:" + strings.Join(traits, ",")}}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: "traits?" + q.Encode(),
		mv: mvTraits, out: &b, ok: []int{200}}); err != nil {
		return fmt.Errorf("list traits: %w", err)
	}
	absent := missing(traits, b.Traits)
	var unknown []string
	for _, t := range absent {
		if !strings.HasPrefix(t, "CUSTOM_") {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: %s (only CUSTOM_ traits can be created)", ErrUnknownTrait, strings.Join(unknown, ", "))
	}
	for _, t := range absent {
		if _, err := c.do(ctx, request{method: http.MethodPut, path: "traits/" + t,
			mv: mvTraits, ok: []int{201, 204}}); err != nil {
			return fmt.Errorf("create trait %s: %w", t, err)
		}
		c.log.Debug("created trait", "trait", t)
	}
	return nil
}

// missing returns the elements of a that are not in b.
func missing(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}
