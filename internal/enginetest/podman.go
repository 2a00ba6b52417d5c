package enginetest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"
)

// PodmanUser is the ordinary user whose rootless Podman service
// .ci/setup-podman.sh starts.
const PodmanUser = "corral-test"

// Podman returns the runtime.Config.Options of the podman driver for the
// rootful service (the "host" is $CONTAINER_HOST if set, else
// unix:///run/podman/podman.sock) or for the rootless service of
// PodmanUser (unix:///run/user/UID/podman/podman.sock, or
// $CORRAL_PODMAN_ROOTLESS_HOST), after checking that the service answers
// and has TestImage. If not, it skips or fails t (see Unavailable).
func Podman(t testing.TB, rootless bool) map[string]string {
	t.Helper()
	engine := "podman (rootful)"
	host := os.Getenv("CONTAINER_HOST")
	if host == "" {
		host = "unix:///run/podman/podman.sock"
	}
	if rootless {
		engine = "podman (rootless)"
		host = os.Getenv("CORRAL_PODMAN_ROOTLESS_HOST")
		if host == "" {
			u, err := user.Lookup(PodmanUser)
			if err != nil {
				Unavailable(t, engine, "sudo .ci/setup-podman.sh", err)
				return nil
			}
			host = "unix:///run/user/" + u.Uid + "/podman/podman.sock"
		}
	}
	if err := pingPodman(host); err != nil {
		Unavailable(t, engine, "sudo .ci/setup-podman.sh", err)
		return nil
	}
	return map[string]string{"host": host, "image": TestImage}
}

// pingPodman checks that the service at host answers and has TestImage.
func pingPodman(host string) error {
	u, err := url.Parse(host)
	if err != nil || u.Scheme != "unix" {
		return fmt.Errorf("podman host %q is not a unix:// URI", host)
	}
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", u.Path)
		}},
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://d/_ping")
	if err != nil {
		return fmt.Errorf("ping %s: %w", host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping %s: HTTP %d", host, resp.StatusCode)
	}
	resp, err = c.Get("http://d/v4.0.0/libpod/images/" + url.PathEscape(TestImage) + "/exists")
	if err != nil {
		return fmt.Errorf("look for %s at %s: %w", TestImage, host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("image %s missing at %s (HTTP %d)", TestImage, host, resp.StatusCode)
	}
	if v := resp.Header.Get("Libpod-Api-Version"); v != "" && strings.HasPrefix(v, "3.") {
		return fmt.Errorf("podman at %s is %s; the bindings need 4.0 or newer", host, v)
	}
	return nil
}
