package enginetest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// DockerDefaultHost is the engine address used when DOCKER_HOST is unset.
const DockerDefaultHost = "unix:///var/run/docker.sock"

// Docker returns runtime.Config.Options for the docker driver: the engine
// address (DOCKER_HOST or the default socket) and TestImage as the default
// image. It pings the engine first and checks that TestImage is present;
// if either fails, the test is skipped (or failed under
// CORRAL_REQUIRE_ENGINES) with a hint to run .ci/setup-docker.sh.
func Docker(t testing.TB) map[string]string {
	t.Helper()
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = DockerDefaultHost
	}
	cli, err := client.New(client.WithHost(host))
	if err != nil {
		Unavailable(t, "docker", "sudo .ci/setup-docker.sh", err)
		return nil
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		Unavailable(t, "docker", "sudo .ci/setup-docker.sh", err)
		return nil
	}
	if _, err := cli.ImageInspect(ctx, TestImage); err != nil {
		Unavailable(t, "docker", "sudo .ci/setup-docker.sh (imports "+TestImage+")", err)
		return nil
	}
	return map[string]string{"host": host, "image": TestImage}
}
