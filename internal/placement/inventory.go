package placement

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Standard resource classes the compute node reports.
const (
	VCPU     = "VCPU"
	MemoryMB = "MEMORY_MB"
	DiskGB   = "DISK_GB"
)

// Inventory is one resource class of a provider's inventory.
//
// In SetInventories a zero MinUnit or StepSize means 1, a zero MaxUnit
// means Total, and a zero AllocationRatio means "keep what placement has,
// else the initial default" (see AllocationRatio).
type Inventory struct {
	Total           int     `json:"total"`
	Reserved        int     `json:"reserved"`
	MinUnit         int     `json:"min_unit"`
	MaxUnit         int     `json:"max_unit"`
	StepSize        int     `json:"step_size"`
	AllocationRatio float64 `json:"allocation_ratio"`
}

// DefaultInitialAllocationRatio is nova's initial_{cpu,ram,disk}_allocation_ratio
// default for VCPU (16.0), MEMORY_MB (1.5) and DISK_GB (1.0); 1.0 (placement's
// own default) for any other class.
func DefaultInitialAllocationRatio(rc string) float64 {
	switch rc {
	case VCPU:
		return 16.0
	case MemoryMB:
		return 1.5
	default:
		return 1.0
	}
}

// AllocationRatio picks a resource class's allocation ratio with nova's
// precedence (nova/virt/driver.py _get_allocation_ratios): the configured
// ratio ([DEFAULT] *_allocation_ratio) when set (> 0); else the value
// placement already has for rc in existing; else initial
// ([DEFAULT] initial_*_allocation_ratio) when set; else
// DefaultInitialAllocationRatio(rc).
func AllocationRatio(rc string, configured float64, existing map[string]Inventory, initial float64) float64 {
	if configured > 0 {
		return configured
	}
	if inv, ok := existing[rc]; ok && inv.AllocationRatio > 0 {
		return inv.AllocationRatio
	}
	if initial > 0 {
		return initial
	}
	return DefaultInitialAllocationRatio(rc)
}

// normalize fills SetInventories' defaults into want.
func normalize(want, existing map[string]Inventory) map[string]Inventory {
	out := make(map[string]Inventory, len(want))
	for rc, inv := range want {
		if inv.MinUnit == 0 {
			inv.MinUnit = 1
		}
		if inv.StepSize == 0 {
			inv.StepSize = 1
		}
		if inv.MaxUnit == 0 {
			inv.MaxUnit = inv.Total
		}
		if inv.AllocationRatio == 0 {
			inv.AllocationRatio = AllocationRatio(rc, 0, existing, 0)
		}
		out[rc] = inv
	}
	return out
}

// ratioEqual compares allocation ratios as placement stores them: a MySQL
// FLOAT column is single precision, so 1.1 comes back as 1.10000002384….
func ratioEqual(a, b float64) bool {
	return a == b || math.Abs(a-b) <= 1e-6*math.Max(math.Abs(a), math.Abs(b))
}

// InventoriesEqual reports whether two inventories have the same resource
// classes and values (allocation ratios to single precision).
func InventoriesEqual(a, b map[string]Inventory) bool {
	if len(a) != len(b) {
		return false
	}
	for rc, x := range a {
		y, ok := b[rc]
		if !ok || x.Total != y.Total || x.Reserved != y.Reserved || x.MinUnit != y.MinUnit ||
			x.MaxUnit != y.MaxUnit || x.StepSize != y.StepSize || !ratioEqual(x.AllocationRatio, y.AllocationRatio) {
			return false
		}
	}
	return true
}

type inventoriesBody struct {
	Generation  int                  `json:"resource_provider_generation"`
	Inventories map[string]Inventory `json:"inventories"`
}

// Inventories returns the provider's inventories and its generation
// (GET /resource_providers/{uuid}/inventories). A missing provider is
// ErrNotFound.
func (c *Client) Inventories(ctx context.Context, uuid string) (map[string]Inventory, int, error) {
	var b inventoriesBody
	if _, err := c.do(ctx, request{method: http.MethodGet, path: providerPath(uuid, "inventories"),
		mv: mvBase, out: &b, ok: []int{200}}); err != nil {
		return nil, 0, fmt.Errorf("get inventories of %s: %w", uuid, err)
	}
	if b.Inventories == nil {
		b.Inventories = map[string]Inventory{}
	}
	return b.Inventories, b.Generation, nil
}

// SetInventories makes the provider's inventory exactly inv (an empty inv
// removes all of it). It reads the current inventory and generation, and
// only when they differ ensures CUSTOM_ resource classes and PUTs the new
// inventory (1.26). On a generation conflict it reads again and retries, up
// to MaxAttempts attempts. Removing or shrinking a class below its
// allocations fails with ErrInventoryInUse.
func (c *Client) SetInventories(ctx context.Context, uuid string, inv map[string]Inventory) error {
	ensured := false
	var lastErr error
	for attempt := 1; attempt <= MaxAttempts; attempt++ {
		cur, gen, err := c.Inventories(ctx, uuid)
		if err != nil {
			return err
		}
		want := normalize(inv, cur)
		if InventoriesEqual(cur, want) {
			c.log.Debug("inventory unchanged", "provider", uuid, "generation", gen)
			return nil
		}
		if !ensured {
			if err := c.ensureResourceClasses(ctx, slices.Sorted(maps.Keys(want))); err != nil {
				return err
			}
			ensured = true
		}
		var out inventoriesBody
		_, err = c.do(ctx, request{method: http.MethodPut, path: providerPath(uuid, "inventories"), mv: mvInventories,
			body: inventoriesBody{Generation: gen, Inventories: want}, out: &out, ok: []int{200}})
		if err == nil {
			c.log.Info("updated inventory", "provider", uuid, "generation", out.Generation, "inventory", want)
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("set inventories of %s: %w", uuid, err)
		}
		lastErr = err
		if attempt < MaxAttempts {
			c.log.Info("inventory update conflict; refreshing", "provider", uuid, "generation", gen, "attempt", attempt, "err", err)
		}
	}
	return fmt.Errorf("set inventories of %s: gave up after %d attempts: %w", uuid, MaxAttempts, lastErr)
}

// ensureResourceClasses creates the CUSTOM_ classes among rcs
// (PUT /resource_classes/{name}, 1.7: 201 created, 204 already there).
func (c *Client) ensureResourceClasses(ctx context.Context, rcs []string) error {
	for _, rc := range rcs {
		if !strings.HasPrefix(rc, "CUSTOM_") {
			continue
		}
		if !validName(rc) {
			return fmt.Errorf("placement: invalid resource class name %q", rc)
		}
		if _, err := c.do(ctx, request{method: http.MethodPut, path: "resource_classes/" + rc,
			mv: mvResClasses, ok: []int{201, 204}}); err != nil {
			return fmt.Errorf("ensure resource class %s: %w", rc, err)
		}
	}
	return nil
}

// validName: trait and resource class names are [A-Z0-9_]+.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// Usages returns the provider's usage per resource class
// (GET /resource_providers/{uuid}/usages).
func (c *Client) Usages(ctx context.Context, uuid string) (map[string]int, error) {
	var b struct {
		Usages map[string]int `json:"usages"`
	}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: providerPath(uuid, "usages"),
		mv: mvBase, out: &b, ok: []int{200}}); err != nil {
		return nil, fmt.Errorf("get usages of %s: %w", uuid, err)
	}
	if b.Usages == nil {
		b.Usages = map[string]int{}
	}
	return b.Usages, nil
}

// ProviderAllocations returns, per consumer, what it uses of this provider
// (GET /resource_providers/{uuid}/allocations): consumer → class → amount.
func (c *Client) ProviderAllocations(ctx context.Context, uuid string) (map[string]map[string]int, error) {
	var b struct {
		Allocations map[string]struct {
			Resources map[string]int `json:"resources"`
		} `json:"allocations"`
	}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: providerPath(uuid, "allocations"),
		mv: mvBase, out: &b, ok: []int{200}}); err != nil {
		return nil, fmt.Errorf("get allocations of provider %s: %w", uuid, err)
	}
	out := make(map[string]map[string]int, len(b.Allocations))
	for consumer, a := range b.Allocations {
		out[consumer] = a.Resources
	}
	return out, nil
}

// DeleteAllocations removes every allocation of a consumer (an instance)
// on every provider: DELETE /allocations/{consumer}, what nova's
// delete_allocation_for_instance does with force=True. A consumer that has
// none (404) is success.
func (c *Client) DeleteAllocations(ctx context.Context, consumerUUID string) error {
	if consumerUUID == "" {
		return fmt.Errorf("placement: DeleteAllocations: empty consumer uuid")
	}
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "allocations/" + url.PathEscape(consumerUUID),
		mv: mvBase, ok: []int{204}})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete allocations of %s: %w", consumerUUID, err)
	}
	if err == nil {
		c.log.Debug("deleted allocations", "consumer", consumerUUID)
	}
	return nil
}
