package firewall

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary run one firewall operation and exit: the
// tests run it with `ip netns exec` so that the exported functions, which
// act on the network namespace they run in, touch only a throwaway one.
const childEnv = "CORRAL_FIREWALL_TEST_OP"

func TestMain(m *testing.M) {
	if op := os.Getenv(childEnv); op != "" {
		if err := runOp(op); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runOp(op string) error {
	f := strings.Fields(op)
	switch f[0] {
	case "ensure": // ensure SERVER ALLOWPRIVATE [PREFIX...]
		cfg := Config{ServerID: f[1], AllowPrivate: f[2] == "true"}
		for _, p := range f[3:] {
			cfg.Masquerade = append(cfg.Masquerade, netip.MustParsePrefix(p))
		}
		return Ensure(cfg)
	case "remove":
		return Remove(f[1])
	case "addsource":
		return AddSource(f[1], netip.MustParseAddr(f[2]))
	case "removesource":
		return RemoveSource(f[1], netip.MustParseAddr(f[2]))
	case "check":
		return Check()
	}
	return fmt.Errorf("unknown op %q", op)
}

// netns makes a throwaway network namespace, deleted when the test ends.
type netns struct {
	t    *testing.T
	name string
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and nf_tables rules")
	}
	name := fmt.Sprintf("corral-fwtest-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	return &netns{t: t, name: name}
}

// run runs op in the namespace, through the exported functions.
func (n *netns) run(op string) error {
	exe, err := os.Executable()
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.name, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+op)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", op, err, out)
	}
	return nil
}

func (n *netns) mustRun(op string) {
	n.t.Helper()
	if err := n.run(op); err != nil {
		n.t.Fatal(err)
	}
}

// conn reads the namespace's nf_tables.
func (n *netns) conn() *nftables.Conn {
	n.t.Helper()
	f, err := os.Open(filepath.Join("/run/netns", n.name))
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { f.Close() })
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// tables lists the inet tables in the namespace.
func (n *netns) tables() []string {
	n.t.Helper()
	ts, err := n.conn().ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		n.t.Fatal(err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	slices.Sort(out)
	return out
}

// rules returns the UserData (or "-" for untagged) of each rule of a chain
// of serverID's table.
func (n *netns) rules(serverID, chain string) []string {
	n.t.Helper()
	rs, err := n.conn().GetRules(table(serverID), &nftables.Chain{Name: chain})
	if err != nil {
		n.t.Fatalf("rules of %s: %v", chain, err)
	}
	out := []string{}
	for _, r := range rs {
		if len(r.UserData) == 0 {
			out = append(out, "-")
		} else {
			out = append(out, string(r.UserData))
		}
	}
	return out
}

func TestTagAndPrefix(t *testing.T) {
	if got := Tag("srv-a"); len(got) != 4 || got != Tag("srv-a") || got == Tag("srv-b") {
		t.Fatalf("Tag: %q", got)
	}
	p := IfacePrefix("srv-a")
	if !strings.HasPrefix(p, AnyPrefix) || len(p) != 7 {
		t.Fatalf("IfacePrefix: %q", p)
	}
}

func TestDeniedRanges(t *testing.T) {
	strict, open := DeniedRanges(false), DeniedRanges(true)
	for _, want := range []string{"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8", "fc00::/7"} {
		if !slices.Contains(strict, netip.MustParsePrefix(want)) {
			t.Errorf("strict lacks %s", want)
		}
	}
	for _, want := range []string{"127.0.0.0/8", "::1/128", "0.0.0.0/8", "224.0.0.0/4"} {
		if !slices.Contains(open, netip.MustParsePrefix(want)) {
			t.Errorf("AllowPrivate lets %s through", want)
		}
	}
	for _, gone := range []string{"10.0.0.0/8", "192.168.0.0/16", "169.254.0.0/16", "fe80::/10"} {
		if slices.Contains(open, netip.MustParsePrefix(gone)) {
			t.Errorf("AllowPrivate still denies %s", gone)
		}
	}
}

func TestResolvers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0\n")
	up := write("up", "# upstreams\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n")
	plain := write("plain", "search example.com\nnameserver 192.0.2.53\nnameserver 127.0.0.1\n")

	if got := fmt.Sprint(resolvers(stub, up)); got != "[10.0.0.2 2001:db8::53]" {
		t.Errorf("stub: %s", got)
	}
	if got := fmt.Sprint(resolvers(plain, up)); got != "[192.0.2.53]" {
		t.Errorf("plain: %s", got)
	}
	if got := resolvers(filepath.Join(dir, "missing"), up); len(got) != 0 {
		t.Errorf("missing: %v", got)
	}
}

func TestCheck(t *testing.T) {
	n := newNetns(t)
	n.mustRun("check")
	if got := n.tables(); len(got) != 0 {
		t.Fatalf("Check left tables: %v", got)
	}
}

func TestEnsureRemove(t *testing.T) {
	n := newNetns(t)
	const srv, other = "server-one", "server-two"
	ensure := "ensure " + srv + " false 10.213.0.0/16"
	n.mustRun(ensure)
	n.mustRun("ensure " + other + " false 10.214.0.0/16")
	want := []string{TableName(srv), TableName(other)}
	slices.Sort(want)
	if got := n.tables(); !slices.Equal(got, want) {
		t.Fatalf("tables %v, want %v", got, want)
	}

	// Deny rules: one per denied range, after the sandbox-to-sandbox drop,
	// the new-connection drop and the resolver accepts.
	wantDeny := []string{}
	for _, p := range DeniedRanges(false) {
		wantDeny = append(wantDeny, tagDeny+p.String())
	}
	forward := n.rules(srv, chainForward)
	resolverRules := 2 * len(Resolvers())
	if len(forward) != 2+resolverRules+len(wantDeny) || !slices.Equal(forward[2+resolverRules:], wantDeny) {
		t.Fatalf("forward rules %v", forward)
	}
	if got := n.rules(srv, chainInput); len(got) != 1 {
		t.Fatalf("input rules %v", got)
	}
	if got := n.rules(srv, chainPre); len(got) != 1 {
		t.Fatalf("prerouting rules %v", got)
	}
	if got := n.rules(srv, chainPost); len(got) != 1 {
		t.Fatalf("postrouting rules %v", got)
	}

	// Idempotent: the same rules again, not twice.
	n.mustRun(ensure)
	if got := n.rules(srv, chainForward); !slices.Equal(got, forward) {
		t.Fatalf("forward after second Ensure %v, want %v", got, forward)
	}

	// Sources: added once however often, kept across Ensure, rebuilt for
	// AllowPrivate, removed.
	src := "10.0.2.100"
	n.mustRun("addsource " + srv + " " + src)
	n.mustRun("addsource " + srv + " " + src)
	srcRules := func() int {
		c := 0
		for _, r := range n.rules(srv, chainOutput) {
			if r == tagSource+src {
				c++
			} else {
				t.Fatalf("output rule %q", r)
			}
		}
		return c
	}
	var deny4, deny4Open int
	for _, p := range DeniedRanges(false) {
		if p.Addr().Is4() {
			deny4++
		}
	}
	for _, p := range DeniedRanges(true) {
		if p.Addr().Is4() {
			deny4Open++
		}
	}
	// The source's resolver accepts: port 53, UDP and TCP, per IPv4 resolver.
	srcResolver := 0
	for _, r := range Resolvers() {
		if r.Is4() {
			srcResolver += 2
		}
	}
	if got := srcRules(); got != 1+srcResolver+deny4 {
		t.Fatalf("source rules %d, want %d", got, 1+srcResolver+deny4)
	}
	n.mustRun("ensure " + srv + " true 10.213.0.0/16")
	if got := srcRules(); got != 1+srcResolver+deny4Open {
		t.Fatalf("source rules after AllowPrivate %d, want %d", got, 1+srcResolver+deny4Open)
	}
	if got := n.rules(srv, chainForward); len(got) != 2+resolverRules+len(DeniedRanges(true)) {
		t.Fatalf("forward rules with AllowPrivate %v", got)
	}
	n.mustRun("removesource " + srv + " " + src)
	n.mustRun("removesource " + srv + " " + src)
	if got := srcRules(); got != 0 {
		t.Fatalf("source rules after RemoveSource %d", got)
	}

	// Remove: the server's table only; again is not an error.
	n.mustRun("remove " + srv)
	n.mustRun("remove " + srv)
	if got := n.tables(); !slices.Equal(got, []string{TableName(other)}) {
		t.Fatalf("tables after Remove %v", got)
	}
	n.mustRun("remove " + other)
	if got := n.tables(); len(got) != 0 {
		t.Fatalf("tables left %v", got)
	}
}

func TestAddSourceNeedsTable(t *testing.T) {
	n := newNetns(t)
	err := n.run("addsource nosuch 10.0.2.100")
	if err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("AddSource without a table: %v", err)
	}
	n.mustRun("removesource nosuch 10.0.2.100")
}

func TestLockExcludes(t *testing.T) {
	old := LockPath
	LockPath = filepath.Join(t.TempDir(), "lock")
	t.Cleanup(func() { LockPath = old })
	unlock, err := Lock()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(LockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("lock held, second flock: %v", err)
	}
	unlock()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("lock released, flock: %v", err)
	}
}
