package compute

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// RecordSchema is the version of state.json written by this agent.
const RecordSchema = 1

// VM states recorded by the agent (nova's vm_states names).
const (
	StateBuilding = "building"
	StateActive   = "active"
	StateError    = "error"
)

// Record is an instance's state as the agent keeps it in
// <instances_path>/<uuid>/state.json.
type Record struct {
	Schema     int         `json:"schema"`
	UUID       string      `json:"uuid"`
	Name       string      `json:"name"`
	Hostname   string      `json:"hostname"`
	ImageID    string      `json:"image_id"`
	Backend    string      `json:"backend"`
	VMState    string      `json:"vm_state"`
	TaskState  string      `json:"task_state,omitempty"`
	MemoryMB   int         `json:"memory_mb"`
	VCPUs      int         `json:"vcpus"`
	RootGB     int         `json:"root_gb,omitempty"`
	ProjectID  string      `json:"project_id,omitempty"`
	UserID     string      `json:"user_id,omitempty"`
	VIFs       []VIFRecord `json:"vifs"`
	CreatedAt  time.Time   `json:"created_at"`
	LaunchedAt *time.Time  `json:"launched_at,omitempty"`
	Fault      string      `json:"fault,omitempty"`
}

// VIFRecord is one plugged VIF. Names are derived from ids, so teardown
// also works without the record.
type VIFRecord struct {
	PortID    string   `json:"port_id"`
	NetworkID string   `json:"network_id"`
	MAC       string   `json:"mac"`
	Bridge    string   `json:"bridge"`
	Tap       string   `json:"tap"`
	Peer      string   `json:"peer"`
	Name      string   `json:"name"`
	MTU       int      `json:"mtu"`
	Addrs     []string `json:"addrs,omitempty"`
	Gateway4  string   `json:"gateway4,omitempty"`
	Gateway6  string   `json:"gateway6,omitempty"`
	// Routes are the subnets' host routes, "destination nexthop".
	Routes []string `json:"routes,omitempty"`
	// DNS are the subnets' name servers.
	DNS []string `json:"dns,omitempty"`
	// DHCP: a subnet of the VIF has Neutron's DHCP (nova's meta
	// dhcp_server).
	DHCP bool `json:"dhcp,omitempty"`
	// Kind is VIFKindOVS for a port of an Open vSwitch bridge (Bridge is
	// then br-int); empty for linuxbridge. Unplug needs it to remove the
	// OVS port (and a hybrid plug's qbr/qvb/qvo, derived from PortID).
	Kind string `json:"kind,omitempty"`
	// Hybrid is vif_details ovs_hybrid_plug; Datapath is datapath_type.
	Hybrid   bool   `json:"ovs_hybrid_plug,omitempty"`
	Datapath string `json:"datapath_type,omitempty"`
	// InstanceUUID is the OVS port's external-ids:vm-uuid.
	InstanceUUID string `json:"instance_uuid,omitempty"`
}

// Store keeps records in memory and on disk. Records of failed builds live
// in <state_path>/faults so that the instance directory can be removed.
type Store struct {
	instances string
	faults    string

	mu   sync.Mutex
	recs map[string]*Record
}

// OpenStore loads every record under instancesPath and faultsDir.
func OpenStore(instancesPath, faultsDir string) (*Store, error) {
	for _, d := range []string{instancesPath, faultsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	s := &Store{instances: instancesPath, faults: faultsDir, recs: map[string]*Record{}}
	load := func(pattern string) error {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			return err
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("open store: %w", err)
			}
			var r Record
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("open store: %s: %w", p, err)
			}
			if !novaobj.ValidUUID(r.UUID) {
				continue
			}
			s.recs[r.UUID] = &r
		}
		return nil
	}
	if err := load(filepath.Join(faultsDir, "*.json")); err != nil {
		return nil, err
	}
	if err := load(filepath.Join(instancesPath, "*", "state.json")); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir is the instance directory of uuid.
func (s *Store) Dir(uuid string) string { return filepath.Join(s.instances, uuid) }

func (s *Store) faultPath(uuid string) string { return filepath.Join(s.faults, uuid+".json") }

// Get returns a copy of the record.
func (s *Store) Get(uuid string) (Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[uuid]
	if !ok {
		return Record{}, false
	}
	return *r, true
}

// Put writes the record atomically under the instance directory (or, for a
// record in the error state whose directory is gone, under faults).
func (s *Store) Put(r Record) error {
	r.Schema = RecordSchema
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("save %s: %w", r.UUID, err)
	}
	path := filepath.Join(s.Dir(r.UUID), "state.json")
	if r.VMState == StateError {
		path = s.faultPath(r.UUID)
	} else if err := os.MkdirAll(s.Dir(r.UUID), 0o755); err != nil {
		return fmt.Errorf("save %s: %w", r.UUID, err)
	}
	if err := rpc.WriteFileAtomic(path, b, 0o644); err != nil {
		return fmt.Errorf("save %s: %w", r.UUID, err)
	}
	s.mu.Lock()
	s.recs[r.UUID] = &r
	s.mu.Unlock()
	return nil
}

// Forget drops the record and its fault file; the caller removes the
// instance directory.
func (s *Store) Forget(uuid string) error {
	s.mu.Lock()
	delete(s.recs, uuid)
	s.mu.Unlock()
	if err := os.Remove(s.faultPath(uuid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List returns copies of all records, by creation time.
func (s *Store) List() []Record {
	s.mu.Lock()
	out := make([]Record, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, *r)
	}
	s.mu.Unlock()
	sort.Slice(out, func(a, b int) bool { return out[a].CreatedAt.Before(out[b].CreatedAt) })
	return out
}
