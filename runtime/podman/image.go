package podman

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/distribution/reference"
	"io"
	"strings"

	"github.com/containers/podman/v5/pkg/bindings/images"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
)

// Pull implements runtime.ImagePuller. Progress comes from the service's
// pull log, one update per line ("Copying blob 1a2b… done" becomes
// Status "Copying blob", Layer "1a2b…"). Idempotent: a present image is
// not pulled again. An image the registry does not have fails with
// errdefs.ErrInvalidArgument coded "image_not_found"; registries named in
// the insecure_registries option are pulled from without TLS verification.
func (d *Driver) Pull(ctx context.Context, image string, progress func(runtime.PullProgress)) error {
	if _, err := reference.ParseNormalizedNamed(image); err != nil {
		return errdefs.Invalid("image_not_found", "%q is not an image reference: %v", image, err)
	}
	c := d.ctx(ctx)
	if ok, err := images.Exists(c, image, nil); err != nil {
		return fmt.Errorf("pull %s: %w", image, mapErr(err))
	} else if ok {
		return nil
	}
	pr, pw := io.Pipe()
	lines := make(chan struct{})
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if progress != nil {
				if p, ok := parseProgress(sc.Text()); ok {
					progress(p)
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	var w io.Writer = pw
	policy := "missing"
	opts := &images.PullOptions{ProgressWriter: &w, Policy: &policy}
	if d.insecure[registryOf(image)] {
		skip := true
		opts.SkipTLSVerify = &skip
	}
	_, err := images.Pull(c, image, opts)
	pw.Close()
	<-lines
	if err != nil {
		if imageMissing(err) {
			return errdefs.Invalid("image_not_found", "image %s not found: %v", image, err)
		}
		if registryDown(err) {
			return errdefs.New(errdefs.ErrUnavailable, "image_pull_failed", "pull %s: registry unreachable: %v", image, err)
		}
		return fmt.Errorf("pull %s: %w", image, mapErr(err))
	}
	if progress != nil {
		progress(runtime.PullProgress{Status: "Pull complete"})
	}
	return nil
}

// parseProgress turns one line of Podman's pull log into an update.
func parseProgress(line string) (runtime.PullProgress, bool) {
	line = strings.TrimSpace(line)
	if line == "" {
		return runtime.PullProgress{}, false
	}
	for _, prefix := range []string{"Copying blob", "Copying config"} {
		if rest, ok := strings.CutPrefix(line, prefix+" "); ok {
			f := strings.Fields(rest)
			p := runtime.PullProgress{Status: prefix}
			if len(f) > 0 {
				p.Layer = strings.TrimPrefix(f[0], "sha256:")
			}
			if len(f) > 1 {
				p.Status += " " + strings.Join(f[1:], " ")
			}
			return p, true
		}
	}
	return runtime.PullProgress{Status: line}, true
}

// registryOf returns the registry part of an image reference, "" for a
// short name.
func registryOf(image string) string {
	first, _, ok := strings.Cut(image, "/")
	if !ok || !strings.ContainsAny(first, ".:") && first != "localhost" {
		return ""
	}
	return first
}

// imageMissing reports whether a pull failed because the image does not
// exist (as opposed to an unreachable registry or engine).
func imageMissing(err error) bool {
	if errors.Is(mapErr(err), errdefs.ErrNotFound) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{
		"manifest unknown", "name unknown", "not found", "no such image",
		"did not resolve to an alias", "repository does not exist",
		"requested access to the resource is denied",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// registryDown reports whether a pull failed because the registry could not
// be reached.
func registryDown(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"connection refused", "no such host", "i/o timeout", "network is unreachable", "tls handshake timeout"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
