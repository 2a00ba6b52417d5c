package podman

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/containers/podman/v5/libpod/define"
	"github.com/containers/podman/v5/pkg/bindings/containers"
	networks "github.com/containers/podman/v5/pkg/bindings/network"
	"github.com/containers/podman/v5/pkg/specgen"
	nettypes "go.podman.io/common/libnetwork/types"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
	"github.com/corralhq/corral/runtime/hostnet"
)

// How network mode open is isolated:
//
//   - Rootful: open-mode workspaces join a bridge network the server owns,
//     corral-open-TAG (TAG = firewall.Tag of the server ID), whose Linux
//     bridge is firewall.IfacePrefix+"p". Netavark picks a free subnet and
//     masquerades it. The network has no DNS server (aardvark would listen
//     on the host side of the bridge, which sandboxes may not reach); the
//     sandbox's resolv.conf names firewall.Resolvers(). The server's
//     firewall (runtime/firewall) matches the bridge by its prefix and drops
//     sandbox to sandbox, sandbox to host (every address) and sandbox to
//     private, link-local and metadata ranges unless the operator allows
//     them; bridged traffic reaches it through br_netfilter, checked at New.
//   - Rootless: slirp4netns already gives each workspace its own stack and
//     keeps it from the host's loopback. Its outbound connections are made
//     from the host, so they are bound to a per-server source address
//     (hostnet.SourceAddr, on the interface hostnet.SourceLink) that
//     the firewall masquerades and whose traffic to the host's own
//     addresses and to denied ranges it drops (firewall.AddSource). This
//     needs a root server, whatever user the service runs as.
//
// Where this cannot be held, the driver does not offer open and the policy
// layer refuses it, unless runtime.NetworkConfig.UnsafeShared keeps the
// engine's default network.

// openNet is the driver's state for open-mode workspaces.
type openNet struct {
	cfg    runtime.NetworkConfig
	name   string // rootful: the engine network; "" if not isolated
	bridge string // rootful: its Linux bridge
	source netip.Addr
	on     bool // open-mode workspaces are isolated by the server

	mu    sync.Mutex
	ready bool // network present and firewall installed by this process
}

// openNetworkName is the engine network of the server's open-mode
// workspaces (rootful).
func openNetworkName(serverID string) string { return "corral-open-" + firewall.Tag(serverID) }

// setupOpen decides how network mode open works here and records it in the
// capabilities; it logs a warning when open is refused or unsafe.
func (d *Driver) setupOpen(cfg runtime.NetworkConfig) {
	d.net = &openNet{cfg: cfg}
	if cfg.UnsafeShared {
		d.log.Warn("UNSAFE: --unsafe-shared-network: open-mode workspaces use the engine's default network, where they can reach each other (rootful) and the host's addresses")
		return
	}
	why := ""
	if err := hostnet.CanIsolate(); err != nil {
		why = err.Error()
	} else if !d.rootless {
		if err := hostnet.BridgeNetfilter(); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		s := &d.caps.Policy
		s.Network = slices.DeleteFunc(s.Network, func(m policy.Mode) bool { return m == policy.NetworkOpen })
		if s.Why == nil {
			s.Why = map[string]string{}
		}
		s.Why["network:"+string(policy.NetworkOpen)] = why
		d.log.Warn("network mode open is refused on this host", "reason", why)
		return
	}
	d.net.on = true
	if d.rootless {
		d.net.source = hostnet.SourceAddr(d.serverID)
		return
	}
	d.net.name = openNetworkName(d.serverID)
	d.net.bridge = firewall.IfacePrefix(d.serverID) + "p"
}

// applyOpen gives an open-mode container the server's network: the
// server's bridge network (rootful) or slirp4netns bound to the server's
// source address (rootless).
func (n *openNet) applyOpen(g *specgen.SpecGenerator, rootless bool) {
	if rootless {
		g.NetNS = specgen.Namespace{NSMode: specgen.Slirp}
		g.NetworkOptions = map[string][]string{"slirp4netns": {
			"outbound_addr=" + n.source.String(),
			"allow_host_loopback=false",
		}}
		return
	}
	g.NetNS = specgen.Namespace{NSMode: specgen.Bridge}
	g.Networks = map[string]nettypes.PerNetworkOptions{n.name: {}}
	for _, r := range firewall.Resolvers() {
		g.DNSServers = append(g.DNSServers, net.IP(r.AsSlice()))
	}
	if off := hostnet.IPv6Off(); len(off) > 0 {
		if g.Sysctl == nil {
			g.Sysctl = map[string]string{}
		}
		for k, v := range off {
			g.Sysctl[k] = v
		}
	}
}

// ensureOpen installs what open-mode workspaces need before the first one
// is created or started: the network (rootful) or the source address
// (rootless), and the firewall. Done once per process; a failure is
// errdefs.ErrFailedPrecondition coded "unsupported_network".
func (d *Driver) ensureOpen(ctx context.Context) error {
	n := d.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ready {
		return nil
	}
	refuse := func(format string, args ...any) error {
		return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network", format, args...)
	}
	if d.rootless {
		addr, err := hostnet.EnsureSource(d.serverID)
		if err != nil {
			return refuse("source address for rootless workspaces: %v", err)
		}
		if err := firewall.Ensure(firewall.Config{ServerID: d.serverID, AllowPrivate: n.cfg.AllowPrivate,
			Masquerade: []netip.Prefix{netip.PrefixFrom(addr, 32)}}); err != nil {
			return refuse("install the firewall: %v", err)
		}
		if err := firewall.AddSource(d.serverID, addr); err != nil {
			return refuse("firewall rules for %s: %v", addr, err)
		}
		n.ready = true
		return nil
	}
	c := d.ctx(ctx)
	rep, err := networks.Inspect(c, n.name, nil)
	switch err = mapErr(err); {
	case err == nil:
		if rep.Labels[runtime.LabelServer] != d.serverID || rep.NetworkInterface != n.bridge {
			return refuse("network %s exists but is not this server's (labels %v, interface %q); remove it", n.name, rep.Labels, rep.NetworkInterface)
		}
	case errors.Is(err, errdefs.ErrNotFound):
		_, err := networks.Create(c, &nettypes.Network{
			Name:             n.name,
			Driver:           "bridge",
			NetworkInterface: n.bridge,
			DNSEnabled:       false,
			Labels:           map[string]string{runtime.LabelManaged: "true", runtime.LabelServer: d.serverID},
		})
		if err = mapErr(err); err != nil && !errors.Is(err, errdefs.ErrConflict) {
			return err
		}
		d.log.Info("created the open-mode network", "network", n.name, "bridge", n.bridge)
	default:
		return err
	}
	// Netavark masquerades the network's subnet itself.
	if err := firewall.Ensure(firewall.Config{ServerID: d.serverID, AllowPrivate: n.cfg.AllowPrivate}); err != nil {
		return refuse("install the firewall for network %s: %v", n.name, err)
	}
	n.ready = true
	return nil
}

// refreshOpen reinstalls what open-mode workspaces need at start-up if
// the server has workspaces on the engine: they may be running (adopted
// after a restart of the server) and the rules may be gone (the host's
// ruleset was flushed). A failure is logged: Start refuses open workspaces
// until it succeeds.
func (d *Driver) refreshOpen(ctx context.Context) {
	if !d.net.on {
		return
	}
	all := true
	ctrs, err := containers.List(d.ctx(ctx), &containers.ListOptions{All: &all,
		Filters: map[string][]string{"label": {runtime.LabelServer + "=" + d.serverID}}})
	if err != nil || len(ctrs) == 0 {
		return
	}
	if err := d.ensureOpen(ctx); err != nil {
		d.log.Warn("reinstall the firewall for open-mode workspaces", "error", err)
	}
}

// checkBridge fails if the container started on the server's network but
// its bridge is not on this host (a service in another network namespace),
// where the firewall cannot see it; the caller stops the container.
func (d *Driver) checkBridge() error {
	if hostnet.LinkExists(d.net.bridge) {
		return nil
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, "unsupported_network",
		"the bridge %s of network %s is not on this host, so the server cannot firewall it", d.net.bridge, d.net.name)
}

// usesOpen reports whether a container of this server was created on its
// open network.
func (d *Driver) usesOpen(data *define.InspectContainerData) bool {
	if !d.net.on {
		return false
	}
	if d.rootless {
		return data.HostConfig != nil && data.HostConfig.NetworkMode == string(specgen.Slirp)
	}
	if data.NetworkSettings == nil {
		return false
	}
	_, ok := data.NetworkSettings.Networks[d.net.name]
	return ok
}

// closeOpen removes the server's network, source address and firewall
// when none of the server's workspaces is left. Errors are logged.
func (d *Driver) closeOpen() {
	if d.net == nil || !d.net.on {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := d.ctx(ctx)
	all := true
	ctrs, err := containers.List(c, &containers.ListOptions{All: &all,
		Filters: map[string][]string{"label": {runtime.LabelServer + "=" + d.serverID}}})
	if err != nil {
		d.log.Warn("list workspaces to decide whether to remove the open network", "error", mapErr(err))
		return
	}
	if len(ctrs) > 0 {
		return
	}
	if d.rootless {
		if err := firewall.RemoveSource(d.serverID, d.net.source); err != nil {
			d.log.Warn("remove the firewall rules of the source address", "error", err)
		}
		if err := hostnet.RemoveSource(d.serverID); err != nil {
			d.log.Warn("remove the source address", "error", err)
		}
	} else if _, err := networks.Remove(c, d.net.name, nil); err != nil && !errors.Is(mapErr(err), errdefs.ErrNotFound) {
		d.log.Warn("remove the open network", "network", d.net.name, "error", mapErr(err))
		return
	}
	if err := firewall.Remove(d.serverID); err != nil {
		d.log.Warn("remove the firewall", "error", err)
	}
}
