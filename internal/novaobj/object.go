// Package novaobj carries nova's versioned-object primitives as data: the
// envelope (name, namespace, version, data, changes) with only the fields the
// agent reads given Go types.
package novaobj

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrInvalid classifies a primitive that is not the object it should be.
var ErrInvalid = errors.New("invalid nova object")

// Object is one nova_object primitive.
type Object struct {
	Name      string
	Namespace string
	Version   string
	Data      map[string]json.RawMessage
	Changes   []string
}

type wireObject struct {
	Name      string                     `json:"nova_object.name"`
	Namespace string                     `json:"nova_object.namespace"`
	Version   string                     `json:"nova_object.version"`
	Data      map[string]json.RawMessage `json:"nova_object.data"`
	Changes   []string                   `json:"nova_object.changes,omitempty"`
}

// UnmarshalJSON decodes a primitive.
func (o *Object) UnmarshalJSON(b []byte) error {
	var w wireObject
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if w.Name == "" {
		return fmt.Errorf("%w: no nova_object.name", ErrInvalid)
	}
	if w.Namespace != "nova" {
		return fmt.Errorf("%w: namespace %q is not nova", ErrInvalid, w.Namespace)
	}
	if w.Data == nil {
		w.Data = map[string]json.RawMessage{}
	}
	*o = Object(w)
	return nil
}

// MarshalJSON encodes the primitive.
func (o Object) MarshalJSON() ([]byte, error) {
	w := wireObject(o)
	if w.Namespace == "" {
		w.Namespace = "nova"
	}
	if w.Data == nil {
		w.Data = map[string]json.RawMessage{}
	}
	return json.Marshal(w)
}

// New returns an empty object of the given class and version.
func New(name, version string) *Object {
	return &Object{Name: name, Namespace: "nova", Version: version, Data: map[string]json.RawMessage{}}
}

// Decode parses raw as an object of class name.
func Decode(raw json.RawMessage, name string) (*Object, error) {
	var o Object
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, err
	}
	if o.Name != name {
		return nil, fmt.Errorf("%w: got %s, want %s", ErrInvalid, o.Name, name)
	}
	return &o, nil
}

// Get decodes field into dst; it reports whether the field was set and not null.
func (o *Object) Get(field string, dst any) (bool, error) {
	raw, ok := o.Data[field]
	if !ok || string(raw) == "null" {
		return false, nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return true, fmt.Errorf("%w: %s.%s: %v", ErrInvalid, o.Name, field, err)
	}
	return true, nil
}

// Set sets field and records it as changed.
func (o *Object) Set(field string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("novaobj: %s.%s: %v", o.Name, field, err))
	}
	o.Data[field] = b
	for _, c := range o.Changes {
		if c == field {
			return
		}
	}
	o.Changes = append(o.Changes, field)
}

// String returns field as a string, "" when unset or not a string.
func (o *Object) String(field string) string {
	var s string
	_, _ = o.Get(field, &s)
	return s
}

// Int returns field as an int, 0 when unset.
func (o *Object) Int(field string) int {
	var n int
	_, _ = o.Get(field, &n)
	return n
}

// Child decodes a nested object field; nil when unset.
func (o *Object) Child(field string) (*Object, error) {
	raw, ok := o.Data[field]
	if !ok || string(raw) == "null" {
		return nil, nil
	}
	var c Object
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s.%s: %w", o.Name, field, err)
	}
	return &c, nil
}

// List decodes an ObjectListBase field ({"objects": [...]}) or a bare object list.
func List(o *Object) ([]*Object, error) {
	if o == nil {
		return nil, nil
	}
	var objs []*Object
	if _, err := o.Get("objects", &objs); err != nil {
		return nil, err
	}
	return objs, nil
}
