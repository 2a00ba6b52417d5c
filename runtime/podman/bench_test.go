package podman

import (
	"context"
	"io"
	"testing"

	"github.com/containers/podman/v5/pkg/api/handlers"
	"github.com/containers/podman/v5/pkg/bindings"
	"github.com/containers/podman/v5/pkg/bindings/containers"
	"github.com/containers/podman/v5/pkg/bindings/volumes"
	entities "github.com/containers/podman/v5/pkg/domain/entities/types"
	"github.com/containers/podman/v5/pkg/specgen"
	dockerContainer "github.com/docker/docker/api/types/container"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/internal/testbin"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
)

// The benchmarks run against the rootful service; each driver benchmark
// has an Engine twin doing the same work straight through the bindings, so
// the difference is the driver's own cost.

var benchPolicy = policy.Policy{Limits: policy.Limits{NoFile: 4096}, Network: policy.Network{Mode: policy.NetworkNone}}

// BenchmarkCreateStart measures Create+Start of a workspace (removal is not
// timed).
func BenchmarkCreateStart(b *testing.B) {
	d := open(b, false, nil)
	ctx := context.Background()
	ids := make([]string, 0, b.N)
	defer func() {
		for _, id := range ids {
			d.Remove(ctx, id)
		}
	}()
	for b.Loop() {
		id := "ws_bench_" + randHex(5)
		ids = append(ids, id)
		if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: benchPolicy}); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// engineConn is a bindings connection of its own to the rootful service.
func engineConn(b *testing.B) context.Context {
	opts := enginetest.Podman(b, false)
	c, err := bindings.NewConnection(context.Background(), opts["host"])
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkEngineCreateStart is BenchmarkCreateStart's twin: the same
// volume and container (same spec) created and started through the
// bindings, without the driver's checks.
func BenchmarkEngineCreateStart(b *testing.B) {
	c := engineConn(b)
	initPath := testbin.Corral(b)
	limits := defaultUlimits(confFiles)
	var names []string
	defer func() {
		force, timeout := true, uint(0)
		for _, n := range names {
			containers.Remove(c, n, &containers.RemoveOptions{Force: &force, Timeout: &timeout})
			volumes.Remove(c, n, &volumes.RemoveOptions{Force: &force})
		}
	}()
	for b.Loop() {
		id := "ws_bench_" + randHex(5)
		names = append(names, containerName(id))
		if _, err := volumes.Create(c, entities.VolumeCreateOptions{Name: volumeName(id), Labels: labels("bench", id, nil)}, nil); err != nil {
			b.Fatal(err)
		}
		var g *specgen.SpecGenerator = specFor("bench", initPath, limits, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: benchPolicy})
		if _, err := containers.CreateWithSpec(c, g, nil); err != nil {
			b.Fatal(err)
		}
		if err := containers.Start(c, g.Name, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecTrue measures a one-shot `true` through the driver, waited
// for with its exit code.
func BenchmarkExecTrue(b *testing.B) {
	d := open(b, false, nil)
	ctx := context.Background()
	id := "ws_bench_" + randHex(5)
	if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: benchPolicy}); err != nil {
		b.Fatal(err)
	}
	defer d.Remove(ctx, id)
	if err := d.Start(ctx, id); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		res, err := runtime.Run(ctx, d, id, runtime.ExecSpec{Argv: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkEngineExecTrue is BenchmarkExecTrue's twin through the bindings:
// ExecCreate, ExecStartAndAttach (stdout and stderr), ExecInspect for the
// exit code.
func BenchmarkEngineExecTrue(b *testing.B) {
	d := open(b, false, nil)
	ctx := context.Background()
	id := "ws_bench_" + randHex(5)
	if err := d.Create(ctx, runtime.Spec{ID: id, Image: enginetest.TestImage, Policy: benchPolicy}); err != nil {
		b.Fatal(err)
	}
	defer d.Remove(ctx, id)
	if err := d.Start(ctx, id); err != nil {
		b.Fatal(err)
	}
	// A connection of its own: ExecStartAndAttach swaps its transport.
	c := engineConn(b)
	var out io.Writer = io.Discard
	yes := true
	for b.Loop() {
		sess, err := containers.ExecCreate(c, containerName(id), &handlers.ExecCreateConfig{ExecOptions: dockerContainer.ExecOptions{
			AttachStdout: true, AttachStderr: true, Cmd: []string{"true"}, WorkingDir: runtime.WorkspaceDir,
		}})
		if err != nil {
			b.Fatal(err)
		}
		if err := containers.ExecStartAndAttach(c, sess, &containers.ExecStartAndAttachOptions{
			OutputStream: &out, ErrorStream: &out, AttachOutput: &yes, AttachError: &yes,
		}); err != nil {
			b.Fatal(err)
		}
		info, err := containers.ExecInspect(c, sess, nil)
		if err != nil || info.ExitCode != 0 {
			b.Fatal(info, err)
		}
	}
}
