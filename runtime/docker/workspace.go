package docker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
	"github.com/corralhq/corral/runtime/hostnet"
	"github.com/corralhq/corral/runtime/internal/procnet"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Create makes the workspace's volume and container, stopped. It pulls the
// image if it is missing. Errors: errdefs.ErrAlreadyExists if the workspace
// (its container or its volume) exists, errdefs.ErrInvalidArgument for a bad
// ID or an image that does not exist ("image_not_found"),
// errdefs.ErrFailedPrecondition for a policy this host cannot enforce. On
// failure nothing is left behind. Not idempotent.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) error {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if err := policy.Check(Name, spec.Policy, d.caps.Policy); err != nil {
		return err
	}
	if spec.Policy.Network.Mode == policy.NetworkAllowlist && spec.ProxySocket == "" {
		return errdefs.Invalid("invalid_spec", "network mode allowlist needs a proxy socket")
	}
	image := spec.Image
	if image == "" {
		image = d.image
	}
	if image == "" {
		return errdefs.Invalid("invalid_spec", "no image given and the docker runtime has no default image (option \"image\")")
	}
	defer d.lock(spec.ID)()

	name := d.objectName(spec.ID)
	if _, err := d.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{}); err == nil {
		return errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %s already exists", spec.ID)
	} else if !isNotFound(err) {
		return engineErr(err, "create workspace %s: inspect container", spec.ID)
	}
	if _, err := d.cli.VolumeInspect(ctx, name, client.VolumeInspectOptions{}); err == nil {
		return errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %s already exists (its volume %s is left over)", spec.ID, name)
	} else if !isNotFound(err) {
		return engineErr(err, "create workspace %s: inspect volume", spec.ID)
	}
	if err := d.ensureImage(ctx, image); err != nil {
		return fmt.Errorf("create workspace %s: %w", spec.ID, err)
	}

	openNet := spec.Policy.Network.Mode == policy.NetworkOpen && d.isolated()
	if openNet {
		if err := d.ensureOpen(ctx); err != nil {
			return fmt.Errorf("create workspace %s: %w", spec.ID, err)
		}
	}

	labels := d.labels(spec.ID, spec.Labels)
	if _, err := d.cli.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: labels}); err != nil {
		return engineErr(err, "create workspace %s: create volume", spec.ID)
	}
	cfg, hc := containerSpec(spec, image, name, d.initPath, labels)
	if openNet {
		applyOpen(hc, d.net.name, firewall.Resolvers(), hostnet.IPv6Off())
	}
	res, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: cfg, HostConfig: hc})
	if err != nil {
		// The volume is ours and unused: take it back so nothing is left.
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if _, rerr := d.cli.VolumeRemove(cctx, name, client.VolumeRemoveOptions{Force: true}); rerr != nil && !isNotFound(rerr) {
			err = errors.Join(err, fmt.Errorf("remove volume: %w", rerr))
		}
		if isConflict(err) {
			return errdefs.New(errdefs.ErrAlreadyExists, "already_exists", "workspace %s already exists: %v", spec.ID, err)
		}
		return engineErr(err, "create workspace %s: create container", spec.ID)
	}
	for _, w := range res.Warnings {
		d.log.Warn("engine warning on create", "workspace_id", spec.ID, "warning", w)
	}
	d.log.Info("workspace created", "workspace_id", spec.ID, "container_id", short(res.ID), "image", image,
		"network", spec.Policy.Network.Mode)
	return nil
}

// cleanupContext keeps clean-up going when the caller's ctx is already done.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// Start starts the workspace's container. Idempotent: a running workspace
// succeeds. errdefs.ErrNotFound if it does not exist.
func (d *Driver) Start(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return errdefs.NotFound("workspace %s not found", id)
	}
	defer d.lock(id)()
	name := d.objectName(id)
	ins, err := d.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if err != nil {
		return engineErr(err, "start workspace %s", id)
	}
	if ins.Container.State != nil && ins.Container.State.Running {
		return nil
	}
	if hc := ins.Container.HostConfig; hc != nil && d.isolated() && string(hc.NetworkMode) == d.net.name {
		// After a restart of the server (or the host), before the
		// sandbox gets a network: the firewall must be in place.
		if err := d.ensureOpen(ctx); err != nil {
			return fmt.Errorf("start workspace %s: %w", id, err)
		}
	}
	if _, err := d.cli.ContainerStart(ctx, name, client.ContainerStartOptions{}); err != nil {
		return engineErr(err, "start workspace %s", id)
	}
	if c := ins.Container.Config; c != nil && slices.Contains(c.Entrypoint, "--proxy") {
		if err := d.waitForwarder(ctx, name); err != nil {
			return fmt.Errorf("start workspace %s: %w", id, err)
		}
	}
	d.log.Info("workspace started", "workspace_id", id)
	return nil
}

// waitForwarder returns once the egress forwarder of `corral init --proxy`
// listens in the container, so that the first command's requests find it.
// It reads PID 1's TCP table from the host; where the host cannot see the
// container it returns at once.
func (d *Driver) waitForwarder(ctx context.Context, name string) error {
	hv := d.view(ctx, name)
	if !hv.visible || hv.pid <= 0 {
		return nil
	}
	return procnet.WaitForwarder(ctx, hv.pid, func() bool { return ownedBy(hv.pid, hv.containerID) })
}

// Stop kills every process in the workspace (the container with all it
// runs) and keeps the container and its volume. Idempotent.
// errdefs.ErrNotFound if it does not exist.
func (d *Driver) Stop(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return errdefs.NotFound("workspace %s not found", id)
	}
	defer d.lock(id)()
	name := d.objectName(id)
	zero := 0
	// Stop with SIGKILL and no grace: it returns once the container has
	// exited, and the engine kills every process in its cgroup.
	if _, err := d.cli.ContainerStop(ctx, name, client.ContainerStopOptions{Signal: "SIGKILL", Timeout: &zero}); err != nil {
		return engineErr(err, "stop workspace %s", id)
	}
	d.log.Info("workspace stopped", "workspace_id", id)
	return nil
}

// Remove deletes the workspace's container and volume. Idempotent: a
// missing workspace succeeds.
func (d *Driver) Remove(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return nil
	}
	defer d.lock(id)()
	name := d.objectName(id)
	if _, err := d.cli.ContainerRemove(ctx, name, client.ContainerRemoveOptions{Force: true}); err != nil && !isNotFound(err) {
		return engineErr(err, "remove workspace %s: container", id)
	}
	if _, err := d.cli.VolumeRemove(ctx, name, client.VolumeRemoveOptions{Force: true}); err != nil && !isNotFound(err) {
		return engineErr(err, "remove workspace %s: volume", id)
	}
	d.views.Delete(name)
	d.log.Info("workspace removed", "workspace_id", id)
	return nil
}

// Inspect reports the workspace's state. errdefs.ErrNotFound if it does not
// exist.
func (d *Driver) Inspect(ctx context.Context, id string) (runtime.Status, error) {
	if err := checkID(id); err != nil {
		return runtime.Status{}, errdefs.NotFound("workspace %s not found", id)
	}
	ins, err := d.cli.ContainerInspect(ctx, d.objectName(id), client.ContainerInspectOptions{})
	if err != nil {
		return runtime.Status{}, engineErr(err, "inspect workspace %s", id)
	}
	return statusFrom(id, ins.Container), nil
}

func statusFrom(id string, c container.InspectResponse) runtime.Status {
	st := runtime.Status{ID: id, State: runtime.StateStopped, Detail: map[string]string{"container_id": c.ID}}
	if c.Config != nil {
		st.Detail["image"] = c.Config.Image
	}
	if s := c.State; s != nil {
		st.State = stateOf(s.Status)
		if s.Running {
			st.Detail["pid"] = fmt.Sprint(s.Pid)
			if t, err := time.Parse(time.RFC3339Nano, s.StartedAt); err == nil {
				st.StartedAt = t
			}
		}
		if s.OOMKilled {
			st.Detail["oom_killed"] = "true"
		}
	}
	return st
}

// stateOf maps the engine's container states to ours.
func stateOf(s container.ContainerState) runtime.State {
	switch s {
	case container.StateCreated:
		return runtime.StateCreated
	case container.StateRunning, container.StatePaused, container.StateRestarting:
		return runtime.StateRunning
	default:
		return runtime.StateStopped
	}
}

// List returns every workspace labelled with this server's ID.
func (d *Driver) List(ctx context.Context) ([]runtime.Status, error) {
	f := client.Filters{}.Add("label", runtime.LabelManaged+"=true", runtime.LabelServer+"="+d.serverID)
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, engineErr(err, "list workspaces")
	}
	out := make([]runtime.Status, 0, len(res.Items))
	for _, c := range res.Items {
		id := c.Labels[runtime.LabelWorkspace]
		if id == "" {
			continue
		}
		out = append(out, runtime.Status{ID: id, State: stateOf(c.State),
			Detail: map[string]string{"container_id": c.ID, "image": c.Image}})
	}
	return out, nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Leftovers implements runtime.LeftoverLister: the workspaces that have a
// volume labelled with this server's ID (a Create cut off between volume
// and container leaves one without a container; Remove removes both).
func (d *Driver) Leftovers(ctx context.Context) ([]string, error) {
	f := client.Filters{}.Add("label", runtime.LabelManaged+"=true", runtime.LabelServer+"="+d.serverID)
	res, err := d.cli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		return nil, engineErr(err, "list volumes")
	}
	var out []string
	for _, v := range res.Items {
		if id := v.Labels[runtime.LabelWorkspace]; id != "" {
			out = append(out, id)
		}
	}
	return out, nil
}
