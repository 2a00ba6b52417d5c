package docker_test

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
)

// The Benchmark*/BenchmarkEngine* pairs measure what the driver costs over
// the same work done straight with the engine client.

// BenchmarkCreateStart creates and starts a workspace through the driver
// (volume, container, init as PID 1) until Start returns.
func BenchmarkCreateStart(b *testing.B) {
	d := open(b)
	ctx := context.Background()
	var ids []string
	defer func() {
		for _, id := range ids {
			d.Remove(ctx, id)
		}
	}()
	for i := 0; b.Loop(); i++ {
		sp := runtime.Spec{ID: fmt.Sprintf("ws_bench_%s_%d", randHex(3), i), Image: enginetest.TestImage,
			Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}}
		if err := d.Create(ctx, sp); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, sp.ID)
		if err := d.Start(ctx, sp.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEngineCreateStart creates and starts the same container with the
// client alone: same image, init and network, an anonymous volume.
func BenchmarkEngineCreateStart(b *testing.B) {
	cli := engine(b)
	initPath := initPath(b)
	ctx := context.Background()
	var ids []string
	defer func() {
		for _, id := range ids {
			cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		}
	}()
	for b.Loop() {
		res, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{
			Config: &container.Config{Image: enginetest.TestImage, Entrypoint: []string{runtime.InitPathInSandbox, "init"},
				WorkingDir: runtime.WorkspaceDir, Labels: map[string]string{runtime.LabelServer: serverID}},
			HostConfig: &container.HostConfig{NetworkMode: "none", Mounts: []mount.Mount{
				{Type: mount.TypeVolume, Target: runtime.WorkspaceDir},
				{Type: mount.TypeBind, Source: initPath, Target: runtime.InitPathInSandbox, ReadOnly: true},
			}},
		})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, res.ID)
		if _, err := cli.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecTrue runs /bin/true through the driver and waits for its
// exit code.
func BenchmarkExecTrue(b *testing.B) {
	d := open(b)
	id := workspace(b, d, nil)
	ctx := context.Background()
	for b.Loop() {
		res, err := runtime.Run(ctx, d, id, runtime.ExecSpec{Argv: []string{"/bin/true"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkEngineExecTrue does the same with the client alone: exec create,
// attached start, read the stream to its end, inspect for the exit code.
func BenchmarkEngineExecTrue(b *testing.B) {
	d := open(b)
	cli := engine(b)
	id := workspace(b, d, nil)
	st, err := d.Inspect(context.Background(), id)
	if err != nil {
		b.Fatal(err)
	}
	cid := st.Detail["container_id"]
	ctx := context.Background()
	for b.Loop() {
		ex, err := cli.ExecCreate(ctx, cid, client.ExecCreateOptions{Cmd: []string{"/bin/true"}, AttachStdout: true, AttachStderr: true})
		if err != nil {
			b.Fatal(err)
		}
		att, err := cli.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := stdcopy.StdCopy(io.Discard, io.Discard, att.Reader); err != nil {
			b.Fatal(err)
		}
		att.Close()
		ins, err := cli.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil || ins.Running || ins.ExitCode != 0 {
			b.Fatal(ins, err)
		}
	}
}
