package docker

import (
	"context"
	"errors"
	"strings"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime"
	"github.com/moby/moby/client"
)

// ensureImage pulls image if it is not present.
func (d *Driver) ensureImage(ctx context.Context, image string) error {
	return d.Pull(ctx, image, nil)
}

// Pull makes image present, pulling it if it is missing, and reports each
// status update of the engine's pull stream to progress (if not nil).
// Idempotent: a present image is not pulled again. Errors:
// errdefs.ErrInvalidArgument coded "image_not_found" for an image the
// registry does not have (or a malformed reference), errdefs.ErrUnavailable
// when the engine is unreachable.
func (d *Driver) Pull(ctx context.Context, image string, progress func(runtime.PullProgress)) error {
	if _, err := d.cli.ImageInspect(ctx, image); err == nil {
		return nil
	} else if isInvalid(err) {
		return errdefs.Invalid("image_not_found", "image %q not found: %v", image, err)
	} else if !isNotFound(err) {
		return engineErr(err, "inspect image %s", image)
	}
	d.log.Info("pulling image", "image", image)
	resp, err := d.cli.ImagePull(ctx, image, client.ImagePullOptions{})
	if err != nil {
		return pullErr(image, err)
	}
	defer resp.Close()
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return pullErr(image, err)
		}
		if msg.Error != nil {
			return pullErr(image, msg.Error)
		}
		if progress != nil && msg.Status != "" {
			p := runtime.PullProgress{Status: msg.Status, Layer: msg.ID}
			if msg.Progress != nil {
				p.Current, p.Total = msg.Progress.Current, msg.Progress.Total
			}
			progress(p)
		}
	}
	// A stream that ended without an error should have left the image;
	// check, so a silent failure is not reported as success.
	if _, err := d.cli.ImageInspect(ctx, image); err != nil {
		return engineErr(err, "image %s missing after pull", image)
	}
	d.log.Info("pulled image", "image", image)
	return nil
}

// pullErr classifies a pull failure. Registries answer a missing repository
// or tag in several ways (404, "manifest unknown", "repository does not
// exist", "pull access denied"), all of which mean the image cannot be had.
func pullErr(image string, err error) error {
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"not found", "manifest unknown", "does not exist", "pull access denied", "invalid reference", "repository name must", "name unknown"} {
		if strings.Contains(msg, s) {
			return errdefs.Invalid("image_not_found", "image %q not found: %v", image, err)
		}
	}
	if isNotFound(err) || isInvalid(err) {
		return errdefs.Invalid("image_not_found", "image %q not found: %v", image, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || client.IsErrConnectionFailed(err) {
		return engineErr(err, "pull image %s", image)
	}
	// The engine answered but could not reach or use the registry: the
	// image may exist, it just cannot be had now.
	return errdefs.New(errdefs.ErrUnavailable, "image_pull_failed", "pull image %s: %v", image, err)
}
