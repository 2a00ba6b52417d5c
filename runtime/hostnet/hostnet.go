// Package hostnet is the host side of the container drivers' open network:
// the checks that say whether this host can keep open-mode containers apart
// with the server's firewall (runtime/firewall), and the per-server source
// address that rootless Podman's slirp4netns sends from.
//
// The container drivers (runtime/docker, runtime/podman) use it; the
// firewall itself is runtime/firewall's. Everything here changes the host
// (a kernel module, a sysctl, a network interface) and needs root.
package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/corralhq/corral/runtime/firewall"
)

// CanIsolate returns nil if this process may change the host's network
// (root, or CAP_NET_ADMIN through firewall.Check) and the server's firewall
// can be installed; otherwise an error saying why, for a refusal.
func CanIsolate() error {
	if os.Geteuid() != 0 {
		return errors.New("the server does not run as root, so it cannot install the firewall that keeps open-mode workspaces apart")
	}
	if err := firewall.Check(); err != nil {
		return fmt.Errorf("the server's firewall cannot be installed on this host: %w", err)
	}
	return nil
}

// sysctls that make bridged traffic pass the host's nf_tables hooks, where
// the server's firewall drops traffic between containers on one bridge.
// Without them, two containers on a bridge talk past every IP rule.
var bridgeSysctls = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

// BridgeNetfilter makes sure that traffic between two containers on one
// Linux bridge passes the host's IP hooks (br_netfilter with
// bridge-nf-call-iptables and -ip6tables on), loading br_netfilter if it is
// missing and turning the two sysctls on if they are off (as dockerd does
// itself). Both settings are host-wide. It returns an error saying why if
// the host cannot do it; then bridged containers cannot be kept apart.
func BridgeNetfilter() error {
	if _, err := os.Stat(bridgeSysctls[0]); errors.Is(err, fs.ErrNotExist) {
		out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput()
		if err != nil {
			return fmt.Errorf("bridged traffic bypasses the firewall: the br_netfilter module is not loaded and `modprobe br_netfilter` failed: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	for _, p := range bridgeSysctls {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("bridged traffic bypasses the firewall: read %s: %w", p, err)
		}
		if strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("bridged traffic bypasses the firewall: %s is off and cannot be turned on: %w", p, err)
		}
	}
	return nil
}

// IPv6Off is the sysctls that leave an open-mode container without IPv6
// (the container networks are IPv4 only; this also closes link-local IPv6
// between containers on one bridge), or nil if this host has no IPv6.
func IPv6Off() map[string]string {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		return nil
	}
	return map[string]string{
		"net.ipv6.conf.all.disable_ipv6":     "1",
		"net.ipv6.conf.default.disable_ipv6": "1",
	}
}

// sourceRange is where per-server source addresses come from.
var sourceRange = netip.MustParsePrefix("10.214.0.0/16")

// SourceAddr is the address in 10.214.0.0/16 that the server identified by
// serverID makes its rootless sandboxes' outbound connections from: the two
// bytes of firewall.Tag(serverID), so servers sharing a host get different
// addresses (unless their tags collide).
func SourceAddr(serverID string) netip.Addr {
	var b [2]byte
	fmt.Sscanf(firewall.Tag(serverID), "%02x%02x", &b[0], &b[1])
	r := sourceRange.Addr().As4()
	return netip.AddrFrom4([4]byte{r[0], r[1], b[0], b[1]})
}

// SourceLink is the name of the interface holding SourceAddr: it carries
// the server's interface prefix, like every interface of the server's
// sandboxes. It is one end of a veth pair whose other end (suffix "t") is
// also on the host: nothing is sent through it, it only makes the address
// the host's own (a dummy interface would do, but not every kernel has the
// dummy driver).
func SourceLink(serverID string) string { return firewall.IfacePrefix(serverID) + "s" }

func sourcePeer(serverID string) string { return firewall.IfacePrefix(serverID) + "t" }

// EnsureSource makes the interface SourceLink(serverID), up, with
// SourceAddr(serverID)/32, and returns the address. Idempotent.
func EnsureSource(serverID string) (netip.Addr, error) {
	addr := SourceAddr(serverID)
	name, peer := SourceLink(serverID), sourcePeer(serverID)
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return addr, fmt.Errorf("look up %s: %w", name, err)
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
		if err := netlink.LinkAdd(veth); err != nil && !errors.Is(err, fs.ErrExist) {
			return addr, fmt.Errorf("create interface %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return addr, fmt.Errorf("look up %s: %w", name, err)
		}
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return addr, fmt.Errorf("interface %s exists and is a %s, not the server's veth", name, link.Type())
	}
	a := &netlink.Addr{IPNet: netlink.NewIPNet(addr.AsSlice())}
	if err := netlink.AddrReplace(link, a); err != nil {
		return addr, fmt.Errorf("address %s on %s: %w", addr, name, err)
	}
	for _, n := range []string{peer, name} {
		l, err := netlink.LinkByName(n)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			return addr, fmt.Errorf("bring up %s: %w", n, err)
		}
	}
	return addr, nil
}

// RemoveSource deletes the interfaces EnsureSource made. Idempotent.
func RemoveSource(serverID string) error {
	name := SourceLink(serverID)
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete interface %s: %w", name, err)
	}
	return nil
}

// LinkExists reports whether an interface named name exists in this
// process's network namespace: a bridge the engine made for the server is
// visible here only if the engine runs on this host, in this namespace.
func LinkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}
