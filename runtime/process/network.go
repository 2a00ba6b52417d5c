package process

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/firewall"
)

// Network mode open on the process driver.
//
// Every workspace gets its own network namespace, whatever its mode
// (abstract unix sockets live per namespace). In mode open the driver adds
// a veth pair: the host end, named firewall.IfacePrefix(serverID)+"v"+lease
// index, holds the first address of a /30 leased from the operator's subnet
// (runtime.NetworkConfig.Subnet), the sandbox end (eth0) the second, with a
// default route via the host end. The host end filters by strict reverse
// path, so a sandbox cannot send as another. The server's firewall table
// (package firewall) drops everything from these interfaces to the host and
// to denied ranges, and between sandboxes, and masquerades the rest behind
// the host's address. The sandbox's /etc/resolv.conf names the host's
// resolvers, the only private addresses its rules let it reach (port 53).
//
// Leases live in DataDir/net/leases.json, taken under the firewall's
// host-wide lock and never on a /30 whose address some interface of the
// host already holds, so servers sharing a host (and a subnet) never
// collide; a restart adopts running sandboxes with their leases, and a
// lease is freed when its workspace is removed.

// openNet is how the driver runs open-mode workspaces on this host.
type openNet struct {
	isolated bool   // own netns + veth + firewall
	shared   bool   // the host's network (operator's UnsafeShared)
	why      string // why open is unavailable, if neither
	subnet   netip.Prefix
	prefix   string // host interface names
	cfg      firewall.Config
}

// probeOpen decides how open mode works here and, when isolated, installs
// the firewall table and repairs what a crash left.
func (d *Driver) probeOpen(nc runtime.NetworkConfig) {
	o := openNet{subnet: nc.Subnet, prefix: firewall.IfacePrefix(d.serverID)}
	if !o.subnet.IsValid() {
		o.subnet = runtime.DefaultSubnet
	}
	o.subnet = o.subnet.Masked()
	o.cfg = firewall.Config{ServerID: d.serverID, AllowPrivate: nc.AllowPrivate, Masquerade: []netip.Prefix{o.subnet}}
	d.open = o
	if nc.UnsafeShared {
		d.open.shared = true
		d.log.Warn("open-mode workspaces share the host's network: they can reach each other and the host (--unsafe-shared-network)")
		return
	}
	if why := d.openWhy(); why != "" {
		d.open.why = why
		return
	}
	if err := firewall.Ensure(o.cfg); err != nil {
		d.open.why = fmt.Sprintf("cannot install the firewall rules: %v", err)
		return
	}
	d.open.isolated = true
	d.repairNet()
}

// openWhy says why open mode cannot be isolated here, or "".
func (d *Driver) openWhy() string {
	switch {
	case os.Geteuid() != 0:
		return "isolating an open network needs root (veth pairs and firewall rules)"
	case !d.ns.netOK:
		return d.ns.netWhy
	case !d.open.subnet.Addr().Is4() || d.open.subnet.Bits() > 30:
		return fmt.Sprintf("subnet %s is not an IPv4 range of at least 4 addresses", d.open.subnet)
	}
	if err := firewall.Check(); err != nil {
		return err.Error()
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Sprintf("list routes: %v", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue // a default route
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !ok || ones == 0 || !netip.PrefixFrom(dst.Unmap(), ones).Overlaps(d.open.subnet) {
			continue
		}
		// Sandboxes' own /30s (this server's or another Corral server's)
		// are expected; anything else means the subnet is in use here.
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err == nil && strings.HasPrefix(link.Attrs().Name, firewall.AnyPrefix) {
			continue
		}
		name := "?"
		if err == nil {
			name = link.Attrs().Name
		}
		return fmt.Sprintf("subnet %s overlaps the host's route to %s on %s (choose another with --subnet)", d.open.subnet, r.Dst, name)
	}
	return ""
}

// netns reports whether a workspace in mode m gets its own network
// namespace.
func (d *Driver) ownNetns(open bool) bool {
	return !open || !d.open.shared
}

func (d *Driver) netDir() string     { return filepath.Join(d.dataDir, "net") }
func (d *Driver) leasesPath() string { return filepath.Join(d.netDir(), "leases.json") }

// leases maps workspace IDs to lease indexes: lease i is the i-th /30 of
// the subnet.
type leases map[string]int

func (d *Driver) readLeases() (leases, error) {
	b, err := os.ReadFile(d.leasesPath())
	if errors.Is(err, fs.ErrNotExist) {
		return leases{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	l := leases{}
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("read leases %s: %w", d.leasesPath(), err)
	}
	return l, nil
}

func (d *Driver) writeLeases(l leases) error {
	if err := os.MkdirAll(d.netDir(), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(l)
	return writeFileAtomic(d.leasesPath(), b)
}

// lease returns workspace id's lease, taking a free one if it has none.
// Callers hold the firewall lock.
func (d *Driver) lease(id string) (int, error) {
	l, err := d.readLeases()
	if err != nil {
		return 0, err
	}
	if i, ok := l[id]; ok {
		return i, nil
	}
	taken := map[int]bool{}
	for _, i := range l {
		taken[i] = true
	}
	// Addresses in use on this host (another server's sandboxes).
	inUse := map[netip.Addr]bool{}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			inUse[ip.Unmap()] = true
		}
	}
	n := 1 << (32 - d.open.subnet.Bits() - 2)
	for i := 0; i < n; i++ {
		if taken[i] {
			continue
		}
		host, _ := d.leaseAddrs(i)
		if inUse[host] {
			continue
		}
		if _, err := netlink.LinkByName(d.hostIface(i)); err == nil {
			continue
		}
		l[id] = i
		if err := d.writeLeases(l); err != nil {
			return 0, fmt.Errorf("write leases: %w", err)
		}
		return i, nil
	}
	return 0, errdefs.New(errdefs.ErrUnavailable, "subnet_exhausted",
		"no free /30 left in subnet %s for an open-mode workspace", d.open.subnet)
}

// freeLease forgets workspace id's lease, if it has one.
func (d *Driver) freeLease(id string) error {
	if !d.open.isolated {
		return nil
	}
	unlock, err := firewall.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	l, err := d.readLeases()
	if err != nil {
		return err
	}
	i, ok := l[id]
	if !ok {
		return nil
	}
	delLink(d.hostIface(i))
	delete(l, id)
	return d.writeLeases(l)
}

// leaseAddrs returns the host end's and the sandbox end's address of lease i.
func (d *Driver) leaseAddrs(i int) (host, sandbox netip.Addr) {
	base := d.open.subnet.Addr().As4()
	v := binary.BigEndian.Uint32(base[:]) + uint32(i)*4
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v+1)
	host = netip.AddrFrom4(b)
	binary.BigEndian.PutUint32(b[:], v+2)
	return host, netip.AddrFrom4(b)
}

// hostIface is the host end's name for lease i: at most 7+1+8 bytes... in
// practice 7+1+4 for a /16.
func (d *Driver) hostIface(i int) string {
	return d.open.prefix + "v" + strconv.FormatInt(int64(i), 16)
}

// setupOpenNet connects workspace id's supervisor (pid, in its own network
// namespace) to the host with a veth pair on the workspace's lease.
func (d *Driver) setupOpenNet(id string, pid int) error {
	unlock, err := firewall.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	i, err := d.lease(id)
	if err != nil {
		return err
	}
	name := d.hostIface(i)
	hostAddr, sbAddr := d.leaseAddrs(i)
	// A stopped sandbox's namespace (and the veth in it) is freed by the
	// kernel in the background: make sure no old end is left.
	delLink(name)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsPid(pid),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			delLink(name)
		}
	}()
	for _, s := range []struct{ path, v string }{
		{"/proc/sys/net/ipv4/conf/" + name + "/rp_filter", "1"},
		{"/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6", "1"},
	} {
		if err := os.WriteFile(s.path, []byte(s.v), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("veth %s: %w", name, err)
		}
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("veth %s: %w", name, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(hostAddr, 30)}); err != nil {
		return fmt.Errorf("veth %s: address: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("veth %s: up: %w", name, err)
	}
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer h.Close()
	peer, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("sandbox eth0: %w", err)
	}
	if err := h.AddrAdd(peer, &netlink.Addr{IPNet: ipNet(sbAddr, 30)}); err != nil {
		return fmt.Errorf("sandbox eth0: address: %w", err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return fmt.Errorf("sandbox eth0: up: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: hostAddr.AsSlice()}); err != nil {
		return fmt.Errorf("sandbox default route: %w", err)
	}
	ok = true
	d.log.Debug("workspace network up", "workspace_id", id, "iface", name, "address", sbAddr.String())
	return nil
}

// teardownOpenNet deletes the host end of workspace id's veth, if any (its
// peer goes with it). The lease stays until the workspace is removed.
func (d *Driver) teardownOpenNet(id string) {
	l, err := d.readLeases()
	if err != nil {
		return
	}
	if i, ok := l[id]; ok {
		delLink(d.hostIface(i))
	}
}

// repairNet, at Open, frees the leases of workspaces that no longer exist
// and deletes host ends of veths whose workspace is not running (a crash
// between start and stop).
func (d *Driver) repairNet() {
	unlock, err := firewall.Lock()
	if err != nil {
		d.log.Warn("network repair skipped", "error", err)
		return
	}
	defer unlock()
	l, err := d.readLeases()
	if err != nil {
		d.log.Warn("network repair skipped", "error", err)
		return
	}
	owner := map[string]string{}
	changed := false
	for id, i := range l {
		if _, err := d.loadMeta(id); errors.Is(err, errdefs.ErrNotFound) {
			delete(l, id)
			changed = true
			continue
		}
		owner[d.hostIface(i)] = id
	}
	if changed {
		if err := d.writeLeases(l); err != nil {
			d.log.Warn("network repair: write leases", "error", err)
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return
	}
	for _, link := range links {
		name := link.Attrs().Name
		if !strings.HasPrefix(name, d.open.prefix+"v") {
			continue
		}
		if id, ok := owner[name]; ok && d.running(id) != nil {
			continue
		}
		delLink(name)
		d.log.Info("removed a leftover sandbox interface", "iface", name)
	}
}

func delLink(name string) {
	if link, err := netlink.LinkByName(name); err == nil {
		_ = netlink.LinkDel(link)
	}
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// writeResolvConf writes the resolv.conf that workspace id's sandbox sees:
// the host's resolvers the firewall lets it reach.
func (d *Driver) writeResolvConf(id string) (string, error) {
	var b strings.Builder
	b.WriteString("# written by corral: the host's resolvers\n")
	for _, a := range firewall.Resolvers() {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	p := filepath.Join(d.wsDir(id), "resolv.conf")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write resolv.conf: %w", err)
	}
	return p, nil
}

var _ = unix.IFNAMSIZ
