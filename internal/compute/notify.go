package compute

import (
	"context"

	"github.com/lxc-agent/lxc-agent/internal/notify"
	"github.com/lxc-agent/lxc-agent/internal/novaobj"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
)

// Notifier sends nova's instance notifications (*notify.Notifier; nil or
// disabled when no notification driver is configured).
type Notifier interface {
	InstanceAction(ctx context.Context, rctx *rpc.RequestContext, inst *novaobj.Instance, action, phase string, fault error, opts ...notify.Option)
}

// phaseStep is one notification: an action (nova's "power_off", …) and a
// phase.
type phaseStep struct{ action, phase string }

// notices are the notifications nova-compute sends around one RPC: before
// the work, after it succeeded, and (for some) when it failed.
type notices struct {
	before, after []phaseStep
	onError       string // the action whose .error nova sends, "" = none
}

func around(action string, withError bool) notices {
	n := notices{before: []phaseStep{{action, notify.PhaseStart}}, after: []phaseStep{{action, notify.PhaseEnd}}}
	if withError {
		n.onError = action
	}
	return n
}

// Nova's notifications per compute method (nova/compute/manager.py).
var methodNotices = map[string]notices{
	"build_and_run_instance": around("create", true),
	"terminate_instance": {
		before: []phaseStep{{"delete", notify.PhaseStart}, {"shutdown", notify.PhaseStart}},
		after:  []phaseStep{{"shutdown", notify.PhaseEnd}, {"delete", notify.PhaseEnd}},
	},
	"stop_instance":     around("power_off", false),
	"start_instance":    around("power_on", false),
	"reboot_instance":   around("reboot", true),
	"pause_instance":    around("pause", false),
	"unpause_instance":  around("unpause", false),
	"suspend_instance":  around("suspend", false),
	"resume_instance":   around("resume", false),
	"rebuild_instance":  around("rebuild", true),
	"snapshot_instance": around("snapshot", false),
}

type instanceKey struct{}

// instanceArgCtx is the instance argument; within a tracked RPC it is the
// one object the wrapper decoded, so that states the handler saves show in
// the notifications sent after it.
func instanceArgCtx(ctx context.Context, req *rpc.Request) (*novaobj.Instance, error) {
	if inst, ok := ctx.Value(instanceKey{}).(*novaobj.Instance); ok {
		return inst, nil
	}
	return instanceArg(req)
}

func (m *Manager) notify(ctx context.Context, req *rpc.Request, inst *novaobj.Instance, steps []phaseStep, fault error) {
	if m.notifier == nil {
		return
	}
	for _, s := range steps {
		var opts []notify.Option
		switch s.action {
		case "snapshot":
			var imageID string
			_, _ = req.Arg("image_id", &imageID)
			opts = append(opts, notify.WithSnapshotImage(imageID))
		case "create", "rebuild":
			var img struct {
				Name string `json:"name"`
			}
			_, _ = req.Arg("image", &img)
			opts = append(opts, notify.WithImageName(img.Name))
		}
		if s.action == "create" && s.phase == notify.PhaseEnd {
			opts = append(opts, notify.WithNetworkInfo(inst.NetworkInfo))
		}
		m.notifier.InstanceAction(ctx, req.Context, inst, s.action, s.phase, fault, opts...)
	}
}
