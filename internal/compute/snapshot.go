package compute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lxc-agent/lxc-agent/internal/metrics"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Image errors the image store and mounter wrap, so that the manager can
// answer with nova's exceptions without knowing their packages.
var (
	ErrImageNotFound     = errors.New("image not found")
	ErrImageUnacceptable = errors.New("image unacceptable")
	// ErrNoCapacity: this host cannot take the work now (e.g. the image cache
	// is full of images in use); nova reschedules such a build elsewhere.
	ErrNoCapacity = errors.New("insufficient compute resources")
)

// Task states of a snapshot (nova.compute.task_states).
const (
	TaskImageSnapshot      = "image_snapshot"
	TaskImagePendingUpload = "image_pending_upload"
	TaskImageUploading     = "image_uploading"
)

// SnapshotFormat says how a snapshot is captured and what Glance is told.
type SnapshotFormat string

// Snapshot formats.
const (
	SnapshotRootTar SnapshotFormat = "root-tar" // a tarball of the root filesystem
	SnapshotRaw     SnapshotFormat = "raw"      // an ext4 filesystem image
)

// Capturer writes an instance's root filesystem, as the user sees it, to w.
type Capturer interface {
	Capture(ctx context.Context, format SnapshotFormat, rootfs string, w io.Writer) error
}

// ImageUploader stores a snapshot as the image nova created for it.
type ImageUploader interface {
	Upload(ctx context.Context, token, imageID, diskFormat, containerFormat string, props map[string]string, body io.Reader) error
}

func classifyImageError(imageID string, err error) error {
	switch {
	case errors.Is(err, ErrImageNotFound):
		e := rpc.NovaException("ImageNotFound", 404, fmt.Sprintf("Image %s could not be found.", imageID), map[string]any{"image_id": imageID})
		e.Err = err
		return e
	case errors.Is(err, ErrNoCapacity):
		e := rpc.NovaException("ComputeResourcesUnavailable", 503, fmt.Sprintf("Insufficient compute resources: %s.", err.Error()),
			map[string]any{"reason": err.Error()})
		e.Err = err
		return e
	case errors.Is(err, ErrImageUnacceptable):
		e := imageUnacceptable(imageID, err.Error())
		e.Err = err
		return e
	}
	return err
}

// setTaskState records a snapshot step locally and, with conductor, in nova
// (expected is the step before, as nova's update_task_state checks it).
func (m *Manager) setTaskState(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, state, expected string) error {
	if rec, ok := m.store.Get(inst.UUID); ok {
		rec.TaskState = state
		if err := m.store.Put(rec); err != nil {
			m.log.Warn("cannot record task state", "instance_uuid", inst.UUID, "task_state", state, "error", err)
		}
	}
	var task any
	if state != "" {
		task = state
	}
	return m.novaSave(ctx, req, inst, expect(expected), map[string]any{"task_state": task})
}

// snapshotInstance freezes the container, captures its root filesystem,
// thaws it and uploads the capture as image_id: the instance is frozen only
// while its files are read.
func (m *Manager) snapshotInstance(ctx context.Context, req *rpc.Request) (any, error) {
	inst, err := instanceArgCtx(ctx, req)
	if err != nil {
		return nil, err
	}
	var imageID string
	if _, err := req.Arg("image_id", &imageID); err != nil {
		return nil, err
	}
	if imageID == "" {
		return nil, fmt.Errorf("%w: snapshot_instance without image_id", rpc.ErrMalformed)
	}
	log := m.logFor(req, inst.UUID).With("image_id", imageID)
	rec, ok := m.store.Get(inst.UUID)
	if !ok || rec.VMState != StateActive {
		return nil, rpc.InstanceNotFound(inst.UUID, driver.ErrNotFound)
	}
	if m.capture == nil || m.upload == nil {
		return nil, fmt.Errorf("snapshots: %w", driver.ErrUnsupported)
	}
	if err := m.setTaskState(ctx, req, inst, TaskImageSnapshot, taskImageSnapshotPend); err != nil {
		return nil, err
	}
	finished := false
	defer func() {
		if !finished { // the failure path: tracked reverts nova's task state
			if rec, ok := m.store.Get(inst.UUID); ok {
				rec.TaskState = ""
				_ = m.store.Put(rec)
			}
		}
	}()
	start := time.Now()

	tmp, err := os.CreateTemp(m.store.Dir(inst.UUID), ".snapshot-*")
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := m.captureFrozen(ctx, inst.UUID, tmp); err != nil {
		log.Error("snapshot capture failed", "error", err)
		return nil, err
	}
	if err := m.setTaskState(ctx, req, inst, TaskImagePendingUpload, TaskImageSnapshot); err != nil {
		return nil, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if err := m.setTaskState(ctx, req, inst, TaskImageUploading, TaskImagePendingUpload); err != nil {
		return nil, err
	}
	t := time.Now()
	props := map[string]string{"image_location": "snapshot", "image_state": "available", "owner_id": rec.ProjectID}
	if rec.ProjectID == "" {
		delete(props, "owner_id")
	}
	if err := m.upload.Upload(ctx, req.Context.AuthToken, imageID, string(m.cfg.SnapshotFormat), "bare", props, tmp); err != nil {
		log.Error("snapshot upload failed", "error", err)
		return nil, classifyImageError(imageID, err)
	}
	m.metrics.SnapshotPhase(metrics.PhaseUpload, time.Since(t))
	log.Info("snapshot uploaded", "seconds", time.Since(start).Seconds(), "format", m.cfg.SnapshotFormat)
	finished = true
	return nil, m.setTaskState(ctx, req, inst, "", TaskImageUploading)
}

// captureFrozen writes the capture with the container frozen if it runs.
func (m *Manager) captureFrozen(ctx context.Context, id string, w io.Writer) (err error) {
	info, err := m.drv.Info(ctx, id)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if info.State == driver.Running {
		p, ok := m.drv.(driver.Pauser)
		if !ok {
			return fmt.Errorf("freeze for snapshot: %w", driver.ErrUnsupported)
		}
		if err := p.Pause(ctx, id); err != nil {
			return fmt.Errorf("freeze for snapshot: %w", err)
		}
		frozen := time.Now()
		defer func() {
			// Thaw even if the request was cancelled: never leave a guest frozen.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if uerr := p.Unpause(uctx, id); uerr != nil {
				err = errors.Join(err, fmt.Errorf("thaw after snapshot: %w", uerr))
			}
			m.metrics.SnapshotPhase(metrics.PhaseFreeze, time.Since(frozen))
		}()
	}
	rootfs := filepath.Join(m.store.Dir(id), "rootfs")
	if err := m.capture.Capture(ctx, m.cfg.SnapshotFormat, rootfs, w); err != nil {
		return fmt.Errorf("snapshot capture: %w", err)
	}
	return nil
}

// cacheImages is nova's cache_images: pre-fetch images and report, per image,
// "cached" (downloaded now), "existing" (already there) or "error".
func (m *Manager) cacheImages(ctx context.Context, req *rpc.Request) (any, error) {
	var ids []string
	if _, err := req.Arg("image_ids", &ids); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ids))
	for _, id := range ids {
		_, hit, err := m.images.Fetch(ctx, id, req.Context.AuthToken)
		switch {
		case err != nil:
			m.log.Warn("cache_images: image not cached", "image_id", id, "error", err)
			out[id] = "error"
		case hit:
			out[id] = "existing"
		default:
			m.metrics.ImageCache(false)
			out[id] = "cached"
		}
	}
	return out, nil
}
