package docker_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/internal/enginetest"
	"github.com/corralhq/corral/policy"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// startRegistry runs Debian's docker-registry on a free loopback port with
// its storage in a temporary directory, and returns its address. The engine
// treats registries on 127.0.0.0/8 as insecure, so plain HTTP works.
func startRegistry(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		enginetest.Unavailable(t, "docker-registry", "sudo .ci/setup-docker.sh (installs docker-registry)", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s never answered: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPull(t *testing.T) {
	d := open(t)
	cli := engine(t)
	reg := startRegistry(t)
	ctx := ctxT(t)
	ref := reg + "/corral/pulltest:" + randHex(4)

	// An image with a layer of its own (the test image plus a random file),
	// so that the pull has something to download.
	tmp, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Image: enginetest.TestImage,
		Config: &container.Config{Cmd: []string{"true"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.ContainerRemove(context.Background(), tmp.ID, client.ContainerRemoveOptions{Force: true})
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	body := make([]byte, 256<<10)
	rand.Read(body)
	tw.WriteHeader(&tar.Header{Name: "random.bin", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	if _, err := cli.CopyToContainer(ctx, tmp.ID, client.CopyToContainerOptions{DestinationPath: "/", Content: &layer}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.ContainerCommit(ctx, tmp.ID, client.ContainerCommitOptions{Reference: ref}); err != nil {
		t.Fatal(err)
	}
	// Put it into the registry, then forget it locally.
	push, err := cli.ImagePush(ctx, ref, client.ImagePushOptions{RegistryAuth: "e30="})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	if err := push.Wait(ctx); err != nil {
		t.Fatalf("push: %v", err)
	}
	push.Close()
	removeImage := func() {
		if _, err := cli.ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true}); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			t.Logf("remove %s: %v", ref, err)
		}
	}
	removeImage()
	t.Cleanup(removeImage)
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		t.Fatalf("%s still present before the pull", ref)
	}

	var updates []runtime.PullProgress
	if err := d.Pull(ctx, ref, func(p runtime.PullProgress) { updates = append(updates, p) }); err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if _, err := cli.ImageInspect(ctx, ref); err != nil {
		t.Fatalf("image missing after Pull: %v", err)
	}
	sawLayer, sawBytes := false, false
	for _, u := range updates {
		sawLayer = sawLayer || u.Layer != "" && u.Status == "Pull complete"
		sawBytes = sawBytes || u.Total > 0 && u.Current > 0
	}
	if !sawLayer || !sawBytes {
		t.Errorf("progress updates lack a completed layer (%v) or byte counts (%v): %+v", sawLayer, sawBytes, updates)
	}

	// Present now: no pull, no progress.
	updates = nil
	if err := d.Pull(ctx, ref, func(p runtime.PullProgress) { updates = append(updates, p) }); err != nil || len(updates) != 0 {
		t.Errorf("second Pull: %v, %d updates; want nil and none", err, len(updates))
	}

	// Create pulls by itself when the image is missing.
	removeImage()
	id := workspace(t, d, func(s *runtime.Spec) { s.Image = ref })
	if r := sh(t, d, id, "echo pulled"); r.Stdout != "pulled\n" {
		t.Errorf("workspace from the pulled image: %+v %q", r.ExitResult, r.Stdout)
	}

	// A missing image, in a registry that answers, and a malformed one.
	for _, missing := range []string{reg + "/corral/no-such-image:latest", reg + "/corral/pulltest:no-such-tag", "Not A Valid Reference"} {
		err := d.Pull(ctx, missing, nil)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || errdefs.Code(err) != "image_not_found" {
			t.Errorf("Pull(%s) = %v (code %q), want image_not_found", missing, err, errdefs.Code(err))
		}
	}
	sp := runtime.Spec{ID: "ws_dt_" + randHex(6), Image: reg + "/corral/no-such-image:latest",
		Policy: policy.Policy{Network: policy.Network{Mode: policy.NetworkNone}}}
	if err := d.Create(ctx, sp); errdefs.Code(err) != "image_not_found" {
		t.Errorf("Create with a missing image: %v, want image_not_found", err)
	}
	if _, err := d.Inspect(ctx, sp.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("failed Create left a workspace: %v", err)
	}
}
