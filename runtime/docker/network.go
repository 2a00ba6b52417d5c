package docker

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
	"github.com/corralhq/corral/runtime/hostnet"
)

// Open-mode workspaces join a bridge network the server owns, named
// corral-open-TAG (TAG = firewall.Tag of the server ID), whose Linux bridge
// is firewall.IfacePrefix+"d". The engine picks its subnet from its address
// pools, which avoid the host's routes and its other networks. Inter-
// container traffic is off in the engine (enable_icc=false) and, whatever the
// engine does, dropped by the server's firewall (runtime/firewall), which
// matches the bridge by its name prefix: a sandbox reaches neither another
// sandbox, nor the host (any of its addresses), nor private, link-local and
// metadata ranges unless the operator allows them. Bridged traffic reaches
// those rules only through br_netfilter, which Open checks.
//
// Where this cannot be held (the server is not root, the engine is not on
// this host or runs rootless, br_netfilter is missing, the firewall cannot be
// installed) the driver does not offer network mode open, so the policy
// layer refuses it, unless the operator set runtime.NetworkConfig
// .UnsafeShared, which keeps the engine's default bridge.

// openNet is the driver's state for open-mode workspaces.
type openNet struct {
	cfg    runtime.NetworkConfig
	name   string // engine network; "" when UnsafeShared (default bridge)
	bridge string // its Linux bridge

	mu    sync.Mutex
	ready bool // network present and firewall installed by this process
}

// openNetworkName is the engine network of the server's open-mode
// workspaces.
func openNetworkName(serverID string) string { return "corral-open-" + firewall.Tag(serverID) }

// openSupport says why this host cannot isolate open-mode workspaces, or ""
// if it can. rootless is the engine's own report.
func (d *Driver) openSupport(rootless bool) string {
	switch {
	case !d.local:
		return "the docker engine is not on this host (" + d.host + "), so the server cannot firewall its bridge"
	case rootless:
		return "rootless docker keeps its bridges in its own network namespace, out of the server's firewall"
	}
	if err := hostnet.CanIsolate(); err != nil {
		return err.Error()
	}
	if err := hostnet.BridgeNetfilter(); err != nil {
		return err.Error()
	}
	return ""
}

// setupOpen decides how network mode open works here and records it in the
// capabilities; it logs a warning when open is refused or unsafe.
func (d *Driver) setupOpen(cfg runtime.NetworkConfig, rootless bool) {
	d.net = &openNet{cfg: cfg}
	if cfg.UnsafeShared {
		d.log.Warn("UNSAFE: --unsafe-shared-network: open-mode workspaces share the engine's default bridge, where they can reach each other and the host")
		return
	}
	if why := d.openSupport(rootless); why != "" {
		s := &d.caps.Policy
		s.Network = slices.DeleteFunc(s.Network, func(m policy.Mode) bool { return m == policy.NetworkOpen })
		if s.Why == nil {
			s.Why = map[string]string{}
		}
		s.Why["network:"+string(policy.NetworkOpen)] = why
		d.log.Warn("network mode open is refused on this host", "reason", why)
		return
	}
	d.net.name = openNetworkName(d.serverID)
	d.net.bridge = firewall.IfacePrefix(d.serverID) + "d"
}

// isolated reports whether open-mode workspaces get the server's network.
func (d *Driver) isolated() bool { return d.net != nil && d.net.name != "" }

// applyOpen puts an open-mode container on the server's network, with the
// host's resolvers (the ones the firewall lets through) and without IPv6.
func applyOpen(hc *container.HostConfig, network string, resolvers []netip.Addr, sysctls map[string]string) {
	hc.NetworkMode = container.NetworkMode(network)
	hc.DNS = resolvers
	if len(sysctls) > 0 {
		hc.Sysctls = make(map[string]string, len(sysctls))
		for k, v := range sysctls {
			hc.Sysctls[k] = v
		}
	}
}

// ensureOpen makes sure the server's open network exists, is the server's,
// has its bridge on this host, and that the firewall is installed. Done once
// per process; a refusal is errdefs.ErrFailedPrecondition coded
// "unsupported_network".
func (d *Driver) ensureOpen(ctx context.Context) error {
	n := d.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ready {
		return nil
	}
	res, err := d.cli.NetworkInspect(ctx, n.name, client.NetworkInspectOptions{})
	switch {
	case err == nil:
		nw := res.Network
		if nw.Labels[runtime.LabelServer] != d.serverID || nw.Options[bridgeNameOpt] != n.bridge {
			return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network",
				"network %s exists but is not this server's (labels %v, bridge %q); remove it", n.name, nw.Labels, nw.Options[bridgeNameOpt])
		}
	case isNotFound(err):
		_, err := d.cli.NetworkCreate(ctx, n.name, client.NetworkCreateOptions{
			Driver: "bridge",
			Options: map[string]string{
				bridgeNameOpt:                                    n.bridge,
				"com.docker.network.bridge.enable_icc":           "false",
				"com.docker.network.bridge.enable_ip_masquerade": "true",
			},
			Labels: map[string]string{runtime.LabelManaged: "true", runtime.LabelServer: d.serverID},
		})
		if err != nil && !isConflict(err) {
			return engineErr(err, "create network %s", n.name)
		}
		d.log.Info("created the open-mode network", "network", n.name, "bridge", n.bridge)
	default:
		return engineErr(err, "inspect network %s", n.name)
	}
	if !hostnet.LinkExists(n.bridge) {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network",
			"the bridge %s of network %s is not on this host, so the server cannot firewall it", n.bridge, n.name)
	}
	// The engine masquerades the bridge's subnet itself.
	if err := firewall.Ensure(firewall.Config{ServerID: d.serverID, AllowPrivate: n.cfg.AllowPrivate}); err != nil {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network", "install the firewall for network %s: %v", n.name, err)
	}
	n.ready = true
	return nil
}

const bridgeNameOpt = "com.docker.network.bridge.name"

// refreshOpen reinstalls the firewall at start-up if the server's open
// network already exists: its workspaces may be running (adopted after a
// restart of the server) and the rules may be gone (the host's ruleset was
// flushed). A failure is logged: Start refuses open workspaces until it
// succeeds.
func (d *Driver) refreshOpen(ctx context.Context) {
	if !d.isolated() {
		return
	}
	if _, err := d.cli.NetworkInspect(ctx, d.net.name, client.NetworkInspectOptions{}); err != nil {
		return
	}
	if err := d.ensureOpen(ctx); err != nil {
		d.log.Warn("reinstall the firewall of the open-mode network", "network", d.net.name, "error", err)
	}
}

// closeOpen removes the server's network and firewall when none of the
// server's workspaces is left on the engine. Errors are logged: Close has
// nobody to return them to who could act on them.
func (d *Driver) closeOpen() {
	if !d.isolated() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := client.Filters{}.Add("label", runtime.LabelManaged+"=true", runtime.LabelServer+"="+d.serverID)
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		d.log.Warn("list workspaces to decide whether to remove the open-mode network", "error", err)
		return
	}
	if len(res.Items) > 0 {
		return
	}
	if _, err := d.cli.NetworkRemove(ctx, d.net.name, client.NetworkRemoveOptions{}); err != nil && !isNotFound(err) {
		d.log.Warn("remove the open-mode network", "network", d.net.name, "error", err)
		return
	}
	if err := firewall.Remove(d.serverID); err != nil {
		d.log.Warn("remove the firewall", "error", err)
	}
}
