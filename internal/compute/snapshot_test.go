package compute

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// fakeCapture records the container's state while it reads the rootfs.
type fakeCapture struct {
	drv     driver.Driver
	id      string
	stateAt driver.PowerState
	err     error
}

func (f *fakeCapture) Capture(ctx context.Context, format SnapshotFormat, rootfs string, w io.Writer) error {
	info, _ := f.drv.Info(ctx, f.id)
	f.stateAt = info.State
	if f.err != nil {
		return f.err
	}
	_, err := io.WriteString(w, string(format)+":"+rootfs)
	return err
}

type fakeUpload struct {
	token, image, disk, container string
	props                         map[string]string
	body                          bytes.Buffer
	err                           error
}

func (f *fakeUpload) Upload(_ context.Context, token, image, disk, container string, props map[string]string, body io.Reader) error {
	if f.err != nil {
		return f.err
	}
	f.token, f.image, f.disk, f.container, f.props = token, image, disk, container, props
	_, err := io.Copy(&f.body, body)
	return err
}

func snapshotHarness(t *testing.T) (*harness, *fakeCapture, *fakeUpload) {
	h := newHarness(t)
	fc := &fakeCapture{drv: h.drv, id: testUUID}
	fu := &fakeUpload{}
	h.m.capture, h.m.upload = fc, fu
	if _, err := h.call(t, "build_and_run_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 0, ""), "image": map[string]string{"id": "i"}}); err != nil {
		t.Fatal(err)
	}
	return h, fc, fu
}

func TestSnapshotFreezesOnlyWhileCapturing(t *testing.T) {
	h, fc, fu := snapshotHarness(t)
	if _, err := h.call(t, "snapshot_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "image_id": "snap-1"}); err != nil {
		t.Fatal(err)
	}
	if fc.stateAt != driver.Paused {
		t.Errorf("captured while %s, want frozen", fc.stateAt)
	}
	if info, _ := h.drv.Info(context.Background(), testUUID); info.State != driver.Running {
		t.Errorf("after snapshot the instance is %s", info.State)
	}
	if fu.image != "snap-1" || fu.disk != "root-tar" || fu.container != "bare" || fu.props["image_location"] != "snapshot" ||
		fu.body.String() != "root-tar:"+h.m.store.Dir(testUUID)+"/rootfs" {
		t.Errorf("upload = %+v %q", fu, fu.body.String())
	}
	if rec, _ := h.m.store.Get(testUUID); rec.TaskState != "" {
		t.Errorf("task state left at %q", rec.TaskState)
	}
}

func TestSnapshotThawsOnFailure(t *testing.T) {
	h, fc, _ := snapshotHarness(t)
	fc.err = errors.New("disk full")
	if _, err := h.call(t, "snapshot_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "image_id": "snap-1"}); err == nil {
		t.Fatal("capture error swallowed")
	}
	if info, _ := h.drv.Info(context.Background(), testUUID); info.State != driver.Running {
		t.Errorf("left the instance %s after a failed snapshot", info.State)
	}
}

func TestSnapshotOfStoppedInstanceDoesNotFreeze(t *testing.T) {
	h, fc, _ := snapshotHarness(t)
	h.drv.SetState(testUUID, driver.Shutdown)
	if _, err := h.call(t, "snapshot_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 4, ""), "image_id": "snap-2"}); err != nil {
		t.Fatal(err)
	}
	if fc.stateAt != driver.Shutdown {
		t.Errorf("captured in state %s", fc.stateAt)
	}
	for _, c := range h.drv.Calls() {
		if c == "Pause" || c == "Unpause" {
			t.Errorf("froze a stopped instance: %v", h.drv.Calls())
		}
	}
}

func TestSnapshotErrors(t *testing.T) {
	h, _, fu := snapshotHarness(t)
	var ex *rpc.Exception
	_, err := h.call(t, "snapshot_instance", map[string]any{"instance": instancePrimitive(t, "0995a387-1136-4d1b-8778-c48a15e37acf", 1, ""), "image_id": "s"})
	if !errors.As(err, &ex) || ex.Class != "InstanceNotFound" {
		t.Errorf("unknown instance: %v", err)
	}
	fu.err = errors.Join(ErrImageUnacceptable, errors.New("image is active"))
	_, err = h.call(t, "snapshot_instance", map[string]any{"instance": instancePrimitive(t, testUUID, 1, ""), "image_id": "s"})
	if !errors.As(err, &ex) || ex.Class != "ImageUnacceptable" {
		t.Errorf("upload refused: %v", err)
	}
}

type cachingImages struct{ have map[string]bool }

func (c *cachingImages) Fetch(_ context.Context, id, _ string) (string, bool, error) {
	if id == "broken" {
		return "", false, ErrImageNotFound
	}
	hit := c.have[id]
	c.have[id] = true
	return "/cache/" + id, hit, nil
}

func TestCacheImages(t *testing.T) {
	h := newHarness(t)
	h.m.images = &cachingImages{have: map[string]bool{"old": true}}
	res, err := h.call(t, "cache_images", map[string]any{"image_ids": []string{"old", "new", "broken"}})
	if err != nil {
		t.Fatal(err)
	}
	got := res.(map[string]string)
	if got["old"] != "existing" || got["new"] != "cached" || got["broken"] != "error" || len(got) != 3 {
		t.Errorf("cache_images = %v", got)
	}
}
