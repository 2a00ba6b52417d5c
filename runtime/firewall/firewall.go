// Package firewall keeps open-mode sandboxes away from everything but the
// internet: other sandboxes, the host (its loopback, every address it has,
// the Corral API), and private, link-local and metadata ranges.
//
// Each Corral server owns one nf_tables table, "inet corral_<tag>", where
// tag is Tag(serverID). Every host-side interface of the server's sandboxes
// (the process driver's veths, the docker/podman drivers' bridges) is named
// with IfacePrefix(serverID), and the table matches interfaces by that
// prefix, so one table covers all of a server's sandboxes whatever their
// number. Traffic to any interface whose name starts with "crl" (other
// servers' sandboxes too) is dropped unless it answers a connection the
// sandbox made.
//
// The rules are installed over netlink (github.com/google/nftables); no nft
// binary is needed. A drop in any nf_tables base chain is final, so accepts
// in other tables (Docker's iptables rules, netavark's) cannot undo ours.
// Every change is made under one host-wide lock, so servers sharing a host
// never interleave their changes.
package firewall

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/policy"
)

// AnyPrefix starts the name of every sandbox interface of every Corral
// server on a host.
const AnyPrefix = "crl"

// Tag returns 4 hex digits of sha256(serverID): short enough for interface
// names (at most 15 bytes), stable across restarts.
func Tag(serverID string) string {
	sum := sha256.Sum256([]byte(serverID))
	return hex.EncodeToString(sum[:2])
}

// IfacePrefix is the prefix of every host-side interface of serverID's
// sandboxes: "crl" + Tag(serverID), 7 bytes, leaving 8 for a suffix.
func IfacePrefix(serverID string) string { return AnyPrefix + Tag(serverID) }

// TableName is the name of serverID's table in the inet family.
func TableName(serverID string) string { return "corral_" + Tag(serverID) }

// Config is what Ensure installs.
type Config struct {
	// ServerID names the server whose sandboxes the rules cover.
	ServerID string
	// AllowPrivate lets sandboxes reach private and link-local ranges
	// (the operator's --allow-private-egress). Loopback, the host's own
	// addresses and other sandboxes stay unreachable.
	AllowPrivate bool
	// Masquerade lists the sandbox source ranges to NAT behind the host's
	// address when they leave through a non-sandbox interface.
	Masquerade []netip.Prefix
}

// Chain names in the table.
const (
	chainPre     = "prerouting"
	chainInput   = "input"
	chainForward = "forward"
	chainOutput  = "output"
	chainPost    = "postrouting"
)

// UserData tags that let rules be found again.
const (
	tagDeny   = "deny:" // forward-chain drops of a denied range
	tagSource = "src:"  // output-chain rules of AddSource
)

// Check reports whether this host can enforce the rules: nil if nf_tables
// is usable by this process (root or CAP_NET_ADMIN, the nf_tables and NAT
// modules present), otherwise an errdefs.ErrFailedPrecondition saying why.
// It changes nothing: its probe table is added and deleted in one
// transaction.
func Check() error {
	return check(nil)
}

func check(opts []nftables.ConnOption) error {
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("%w: nf_tables unavailable: %v", errdefs.ErrFailedPrecondition, err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return fmt.Errorf("%w: nf_tables unavailable (root or CAP_NET_ADMIN needed): %v", errdefs.ErrFailedPrecondition, err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "corral_probe"})
	c.AddChain(&nftables.Chain{Name: chainPost, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("%w: nf_tables cannot hold NAT rules here: %v", errdefs.ErrFailedPrecondition, err)
	}
	return nil
}

// Ensure installs or refreshes cfg.ServerID's table. Idempotent: calling it
// again replaces the input, forward and postrouting rules in one atomic
// transaction (no moment without them) and keeps the sources AddSource
// registered, with their rules rebuilt for cfg. It also turns on IPv4
// forwarding and, where iptables' FORWARD policy is DROP (Docker sets it),
// accepts the server's interfaces in the DOCKER-USER chain, so Docker's
// policy does not drop what the table lets through.
func Ensure(cfg Config) error {
	unlock, err := Lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := ensure(nil, cfg); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("firewall: enable IPv4 forwarding: %w", err)
	}
	return dockerUser(true, IfacePrefix(cfg.ServerID))
}

// Remove deletes serverID's table and its DOCKER-USER rules. Idempotent:
// nothing installed is not an error. Sandboxes still running lose their
// isolation rules, so callers remove only when none is left.
func Remove(serverID string) error {
	unlock, err := Lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := remove(nil, serverID); err != nil {
		return err
	}
	return dockerUser(false, IfacePrefix(serverID))
}

// AddSource confines traffic the host sends with source address addr:
// rootless podman's slirp4netns opens a sandbox's outbound connections
// from the host's own network stack, bound to a per-server address, so the
// forward rules never see them. Packets from addr to any of the host's own
// addresses and to the ranges the table denies (per Config.AllowPrivate)
// are dropped in the output hook. Ensure must have installed the table
// first (errdefs.ErrFailedPrecondition otherwise). Idempotent.
func AddSource(serverID string, addr netip.Addr) error {
	unlock, err := Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return addSource(nil, serverID, addr)
}

// RemoveSource removes AddSource's rules for addr. Idempotent: an unknown
// address or a missing table is not an error.
func RemoveSource(serverID string, addr netip.Addr) error {
	unlock, err := Lock()
	if err != nil {
		return err
	}
	defer unlock()
	return removeSource(nil, serverID, addr)
}

// LockPath is the host-wide lock file that orders firewall changes.
var LockPath = "/run/lock/corral-firewall"

// Lock takes the host-wide lock that orders every firewall change by any
// Corral server on this host, blocking until it is free, and returns the
// function that releases it. Ensure, Remove, AddSource and RemoveSource
// take it themselves: hold it only around changes of your own that must not
// interleave with another server's (creating a bridge and its rules, say),
// and never call those functions while holding it, which would deadlock.
func Lock() (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return nil, fmt.Errorf("firewall lock: %w", err)
	}
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("firewall lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("firewall lock %s: %w", LockPath, err)
	}
	return func() { f.Close() }, nil
}

// Resolvers returns the host's DNS servers that a sandbox can use: those in
// /etc/resolv.conf or, where that names only systemd-resolved's stub
// (127.0.0.53), its upstreams from /run/systemd/resolve/resolv.conf.
// Loopback addresses are left out (a sandbox cannot reach the host's
// loopback). Ensure's rules let sandboxes reach exactly these on port 53,
// even where they are private.
func Resolvers() []netip.Addr {
	return resolvers("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
}

func resolvers(main, upstream string) []netip.Addr {
	addrs := nameservers(main)
	var out []netip.Addr
	stub := false
	for _, a := range addrs {
		if a.IsLoopback() {
			stub = stub || a == netip.AddrFrom4([4]byte{127, 0, 0, 53})
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 && stub {
		for _, a := range nameservers(upstream) {
			if !a.IsLoopback() {
				out = append(out, a)
			}
		}
	}
	return out
}

func nameservers(path string) []netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		// A zone (fe80::1%eth0) cannot be named in a rule; skip such entries.
		a, err := netip.ParseAddr(fields[1])
		if err != nil || a.Zone() != "" {
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

// DeniedRanges returns the destinations the forward rules drop for
// sandboxes: policy.DeniedRanges(), less the private and link-local ranges
// when allowPrivate is set (loopback, unspecified, multicast and the
// address-embedding IPv6 ranges are always denied).
func DeniedRanges(allowPrivate bool) []netip.Prefix {
	all := policy.DeniedRanges()
	if !allowPrivate {
		return all
	}
	opened := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
	}
	var out []netip.Prefix
	for _, p := range all {
		keep := true
		for _, o := range opened {
			if p == o {
				keep = false
			}
		}
		if keep {
			out = append(out, p)
		}
	}
	return out
}

func table(serverID string) *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(serverID)}
}

func chains(t *nftables.Table) (pre, input, forward, output, post *nftables.Chain) {
	accept := nftables.ChainPolicyAccept
	pre = &nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept}
	input = &nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	forward = &nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	output = &nftables.Chain{Name: chainOutput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	post = &nftables.Chain{Name: chainPost, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}
	return
}

func ensure(opts []nftables.ConnOption, cfg Config) error {
	if cfg.ServerID == "" {
		return errdefs.Invalid("invalid_argument", "firewall: empty server ID")
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	sources, err := listSources(c, cfg.ServerID)
	if err != nil {
		return err
	}
	t := c.AddTable(table(cfg.ServerID))
	pre, input, forward, output, post := chains(t)
	for _, ch := range []*nftables.Chain{pre, input, forward, output, post} {
		c.AddChain(ch)
		c.FlushChain(ch)
	}
	prefix := IfacePrefix(cfg.ServerID)
	denied := DeniedRanges(cfg.AllowPrivate)

	// prerouting: strict reverse-path filter (nft's "fib saddr . iif oif
	// missing drop"), whatever the rp_filter sysctls say: a sandbox
	// cannot send as another, so no reply can be steered into one.
	c.AddRule(&nftables.Rule{Table: t, Chain: pre,
		Exprs: join(ifname(expr.MetaKeyIIFNAME, prefix, true), []expr.Any{
			&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		}, verdict(expr.VerdictDrop))})

	// input: nothing from a sandbox reaches the host itself.
	c.AddRule(&nftables.Rule{Table: t, Chain: input,
		Exprs: join(ifname(expr.MetaKeyIIFNAME, prefix, true), verdict(expr.VerdictDrop))})

	// forward: no sandbox reaches another, of this server or any other.
	c.AddRule(&nftables.Rule{Table: t, Chain: forward,
		Exprs: join(ifname(expr.MetaKeyIIFNAME, prefix, true), ifname(expr.MetaKeyOIFNAME, AnyPrefix, true),
			verdict(expr.VerdictDrop))})
	// Nothing opens a connection into a sandbox; replies to its own pass.
	c.AddRule(&nftables.Rule{Table: t, Chain: forward,
		Exprs: join(ifname(expr.MetaKeyOIFNAME, AnyPrefix, true), ctNotEstablished(), verdict(expr.VerdictDrop))})
	// The host's resolvers, on port 53 only, even where they are private.
	for _, r := range Resolvers() {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			c.AddRule(&nftables.Rule{Table: t, Chain: forward,
				Exprs: join(ifname(expr.MetaKeyIIFNAME, prefix, true), daddr(netip.PrefixFrom(r, r.BitLen())),
					dport(proto, 53), verdict(expr.VerdictAccept))})
		}
	}
	for _, p := range denied {
		c.AddRule(&nftables.Rule{Table: t, Chain: forward, UserData: []byte(tagDeny + p.String()),
			Exprs: join(ifname(expr.MetaKeyIIFNAME, prefix, true), daddr(p), verdict(expr.VerdictDrop))})
	}

	// output: the sources AddSource registered, rebuilt for this cfg.
	for _, s := range sources {
		for _, r := range sourceRules(t, output, s, denied) {
			c.AddRule(r)
		}
	}

	// postrouting: sandboxes leave behind the host's address.
	for _, p := range cfg.Masquerade {
		c.AddRule(&nftables.Rule{Table: t, Chain: post,
			Exprs: join(saddr(p.Masked()), ifname(expr.MetaKeyOIFNAME, AnyPrefix, false),
				[]expr.Any{&expr.Masq{}})})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: install table %s: %w", TableName(cfg.ServerID), err)
	}
	return nil
}

func remove(opts []nftables.ConnOption, serverID string) error {
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	if _, err := c.ListTableOfFamily(TableName(serverID), nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("firewall: look up table %s: %w", TableName(serverID), err)
	}
	c.DelTable(table(serverID))
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("firewall: remove table %s: %w", TableName(serverID), err)
	}
	return nil
}

// listSources returns the addresses AddSource registered in serverID's
// table; none if there is no table.
func listSources(c *nftables.Conn, serverID string) ([]netip.Addr, error) {
	rules, err := c.GetRules(table(serverID), &nftables.Chain{Name: chainOutput})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("firewall: list rules of %s: %w", TableName(serverID), err)
	}
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, r := range rules {
		s, ok := strings.CutPrefix(string(r.UserData), tagSource)
		if !ok {
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}

// deniedOf returns the ranges serverID's forward chain denies.
func deniedOf(c *nftables.Conn, serverID string) ([]netip.Prefix, error) {
	if _, err := c.ListTableOfFamily(TableName(serverID), nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: firewall table %s is not installed", errdefs.ErrFailedPrecondition, TableName(serverID))
		}
		return nil, fmt.Errorf("firewall: look up table %s: %w", TableName(serverID), err)
	}
	rules, err := c.GetRules(table(serverID), &nftables.Chain{Name: chainForward})
	if err != nil {
		return nil, fmt.Errorf("firewall: list rules of %s: %w", TableName(serverID), err)
	}
	var out []netip.Prefix
	for _, r := range rules {
		if s, ok := strings.CutPrefix(string(r.UserData), tagDeny); ok {
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func sourceRules(t *nftables.Table, output *nftables.Chain, src netip.Addr, denied []netip.Prefix) []*nftables.Rule {
	ud := []byte(tagSource + src.String())
	var out []*nftables.Rule
	if src.Is4() {
		// fib daddr type local: any address of the host, on any interface.
		out = append(out, &nftables.Rule{Table: t, Chain: output, UserData: ud,
			Exprs: join(saddr(netip.PrefixFrom(src, 32)), []expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			}, verdict(expr.VerdictDrop))})
	} else {
		out = append(out, &nftables.Rule{Table: t, Chain: output, UserData: ud,
			Exprs: join(saddr(netip.PrefixFrom(src, 128)), []expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			}, verdict(expr.VerdictDrop))})
	}
	// The host's resolvers on port 53, even where they are private, as in
	// the forward chain: slirp4netns forwards a sandbox's DNS from src.
	// After the local drop, so a resolver on the host itself stays shut.
	for _, r := range Resolvers() {
		if r.Is4() != src.Is4() {
			continue
		}
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			out = append(out, &nftables.Rule{Table: t, Chain: output, UserData: ud,
				Exprs: join(saddr(netip.PrefixFrom(src, src.BitLen())), daddr(netip.PrefixFrom(r, r.BitLen())),
					dport(proto, 53), verdict(expr.VerdictAccept))})
		}
	}
	for _, p := range denied {
		if p.Addr().Is4() != src.Is4() {
			continue
		}
		out = append(out, &nftables.Rule{Table: t, Chain: output, UserData: ud,
			Exprs: join(saddr(netip.PrefixFrom(src, src.BitLen())), daddr(p), verdict(expr.VerdictDrop))})
	}
	return out
}

func addSource(opts []nftables.ConnOption, serverID string, addr netip.Addr) error {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return errdefs.Invalid("invalid_argument", "firewall: invalid source address")
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	denied, err := deniedOf(c, serverID)
	if err != nil {
		return err
	}
	t := table(serverID)
	_, _, _, output, _ := chains(t)
	if err := delSourceRules(c, t, addr); err != nil {
		return err
	}
	for _, r := range sourceRules(t, output, addr, denied) {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: add source %s: %w", addr, err)
	}
	return nil
}

func removeSource(opts []nftables.ConnOption, serverID string, addr netip.Addr) error {
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	t := table(serverID)
	if err := delSourceRules(c, t, addr.Unmap()); err != nil {
		return err
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("firewall: remove source %s: %w", addr, err)
	}
	return nil
}

// delSourceRules queues the deletion of addr's output rules on c.
func delSourceRules(c *nftables.Conn, t *nftables.Table, addr netip.Addr) error {
	ch := &nftables.Chain{Name: chainOutput, Table: t}
	rules, err := c.GetRules(t, ch)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("firewall: list rules of %s: %w", t.Name, err)
	}
	for _, r := range rules {
		if string(r.UserData) == tagSource+addr.String() {
			if err := c.DelRule(&nftables.Rule{Table: t, Chain: ch, Handle: r.Handle}); err != nil {
				return fmt.Errorf("firewall: remove rule: %w", err)
			}
		}
	}
	return nil
}

// dockerUser adds (or removes) accepts for the server's interfaces in
// iptables' DOCKER-USER chain when the FORWARD policy is DROP, so Docker's
// policy does not drop what our table lets through. Without the iptables
// command or the chain there is nothing to do. The accepts decide nothing
// by themselves: our table's drops happen whatever iptables accepts.
func dockerUser(add bool, prefix string) error {
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return nil
	}
	if !add {
		for _, rule := range dockerUserRules(prefix) {
			for exec.Command(bin, append([]string{"-w", "-D", "DOCKER-USER"}, rule...)...).Run() == nil {
			}
		}
		return nil
	}
	if exec.Command(bin, "-w", "-S", "DOCKER-USER").Run() != nil {
		return nil // no such chain: Docker is not here
	}
	out, err := exec.Command(bin, "-w", "-S", "FORWARD").Output()
	if err != nil || !strings.Contains(string(out), "-P FORWARD DROP") {
		return nil
	}
	for _, rule := range dockerUserRules(prefix) {
		if exec.Command(bin, append([]string{"-w", "-C", "DOCKER-USER"}, rule...)...).Run() == nil {
			continue
		}
		if out, err := exec.Command(bin, append([]string{"-w", "-I", "DOCKER-USER"}, rule...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("firewall: iptables -I DOCKER-USER: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func dockerUserRules(prefix string) [][]string {
	comment := []string{"-m", "comment", "--comment", "corral " + prefix}
	return [][]string{
		append([]string{"-i", prefix + "+", "-j", "ACCEPT"}, comment...),
		append([]string{"-o", prefix + "+", "-j", "ACCEPT"}, comment...),
	}
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}

// ifname matches an interface name starting with prefix (eq) or not (!eq):
// comparing only the prefix's bytes is nft's "name*" wildcard.
func ifname(key expr.MetaKey, prefix string, eq bool) []expr.Any {
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(prefix)},
	}
}

// ctNotEstablished matches packets that neither belong to nor relate to a
// connection already seen both ways: new, invalid and untracked ones.
func ctNotEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func saddr(p netip.Prefix) []expr.Any { return addrMatch(p, false) }
func daddr(p netip.Prefix) []expr.Any { return addrMatch(p, true) }

// addrMatch matches a source or destination in p, for the prefix's family
// only (an inet table sees both).
func addrMatch(p netip.Prefix, dst bool) []expr.Any {
	p = p.Masked()
	var proto byte = unix.NFPROTO_IPV4
	off, size := uint32(12), uint32(4)
	if p.Addr().Is6() {
		proto, off, size = unix.NFPROTO_IPV6, 8, 16
	}
	if dst {
		off += size
	}
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
	}
	if p.Bits() < p.Addr().BitLen() {
		mask := make([]byte, size)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size,
			Mask: mask, Xor: make([]byte, size)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

// dport matches a transport protocol and destination port.
func dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}
