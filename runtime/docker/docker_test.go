package docker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/nettest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/corralhq/corral/runtime/docker"
	"github.com/corralhq/corral/runtime/runtimetest"
	"github.com/hashicorp/go-hclog"
	"github.com/moby/moby/client"
)

// serverID marks everything this test process creates, so that TestMain can
// prove nothing was left behind.
var serverID = "corraltest-" + randHex(4)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := leftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: left behind by the tests:", err)
		code = 1
	}
	os.Exit(code)
}

// leftovers lists containers, volumes and networks labelled with this run's
// server ID, and the server's firewall table and interfaces.
func leftovers() error {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = enginetest.DockerDefaultHost
	}
	cli, err := client.New(client.WithHost(host))
	if err != nil {
		return nil
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil // the suites were skipped
	}
	f := client.Filters{}.Add("label", runtime.LabelServer+"="+serverID)
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return err
	}
	vs, err := cli.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		return err
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		return err
	}
	left := nettest.Leftovers(serverID)
	for _, n := range ns.Items {
		left = append(left, "network "+n.Name)
	}
	for _, c := range cs.Items {
		left = append(left, "container "+strings.Join(c.Names, ","))
	}
	for _, v := range vs.Items {
		left = append(left, "volume "+v.Name)
	}
	if len(left) > 0 {
		return fmt.Errorf("%s", strings.Join(left, "; "))
	}
	return nil
}

// open opens the driver against the real engine (skipping or failing as
// enginetest says when there is none) and closes it when t ends.
func open(t testing.TB) *docker.Driver {
	t.Helper()
	opts := enginetest.Docker(t)
	d, err := docker.Open(context.Background(), runtime.Config{
		ServerID: serverID,
		DataDir:  t.TempDir(),
		InitPath: testbin.Corral(t),
		Options:  opts,
		Logger:   hclog.NewNullLogger(),
	})
	if err != nil {
		t.Fatalf("open docker driver: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func engine(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.New(client.WithHost(enginetest.Docker(t)["host"]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestConformance(t *testing.T) {
	d := open(t)
	runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage})
}

// TestNetwork tries to get out of none and allowlist workspaces.
func TestNetwork(t *testing.T) {
	runtimetest.RunNetwork(t, open(t), enginetest.TestImage)
}

// TestIsolation: open-mode workspaces reach the internet and nothing else.
func TestIsolation(t *testing.T) {
	runtimetest.RunIsolation(t, open(t), enginetest.TestImage)
}

func TestConformanceOpenNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	d := open(t)
	runtimetest.Run(t, d, runtimetest.Options{Image: enginetest.TestImage, Network: policy.NetworkOpen})
}

func TestRegistered(t *testing.T) {
	found := false
	for _, n := range runtime.Drivers() {
		found = found || n == "docker"
	}
	if !found {
		t.Fatalf("docker not among registered drivers %v", runtime.Drivers())
	}
}

func TestOpenUnreachable(t *testing.T) {
	_, err := runtime.Open("docker", runtime.Config{
		ServerID: serverID,
		InitPath: testbin.Corral(t),
		Options:  map[string]string{"host": "unix://" + t.TempDir() + "/no.sock"},
	})
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("open with a missing socket: %v, want ErrUnavailable", err)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// workspace creates and starts a workspace with spec adjusted by adjust,
// removed when t ends.
func workspace(t testing.TB, d *docker.Driver, adjust func(*runtime.Spec)) string {
	t.Helper()
	sp := runtime.Spec{
		ID:     "ws_dt_" + randHex(6),
		Image:  enginetest.TestImage,
		Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}},
	}
	if adjust != nil {
		adjust(&sp)
	}
	ctx := ctxT(t)
	if err := d.Create(ctx, sp); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Remove(context.Background(), sp.ID); err != nil {
			t.Errorf("Remove(%s): %v", sp.ID, err)
		}
	})
	if err := d.Start(ctx, sp.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return sp.ID
}

type result struct {
	runtime.ExitResult
	Stdout, Stderr string
}

func sh(t testing.TB, d *docker.Driver, id, script string) result {
	t.Helper()
	out, errb := runtime.NewOutput(0), runtime.NewOutput(0)
	res, err := runtime.Run(ctxT(t), d, id, runtime.ExecSpec{Argv: []string{"sh", "-c", script}, Stdout: out, Stderr: errb})
	if err != nil {
		t.Fatalf("sh -c %q: %v", script, err)
	}
	return result{res, out.String(), errb.String()}
}

func initPath(t testing.TB) string { return testbin.Corral(t) }
