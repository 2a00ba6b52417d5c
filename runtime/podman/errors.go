package podman

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/containers/podman/v5/pkg/bindings"

	"github.com/corralhq/corral/errdefs"
	"github.com/corralhq/corral/runtime/internal/engineguard"
)

// mapErr classifies an error from the Podman service into an errdefs class,
// keeping the engine's message. It is the one place where engine status
// codes become Corral's error classes.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		if class := classOf(coded.Code()); class != nil {
			return &classified{class: class, err: err}
		}
		// Podman answers 500 for a container in the wrong state.
		if strings.Contains(err.Error(), "container state improper") {
			return &classified{class: errdefs.ErrConflict, err: err}
		}
		return err
	}
	var ce bindings.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return engineguard.Unavailable(Name, err)
	}
	return err
}

// classOf maps an HTTP status of the service to an error class; nil for
// internal errors.
func classOf(status int) error {
	switch status {
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusConflict:
		return errdefs.ErrConflict
	case http.StatusBadRequest:
		return errdefs.ErrInvalidArgument
	case http.StatusNotImplemented:
		return errdefs.ErrNotImplemented
	case http.StatusServiceUnavailable:
		return errdefs.ErrUnavailable // the service's own message: no address of ours
	}
	return nil
}

// classified is an engine error with its class: errors.Is matches both the
// class and the engine's error.
type classified struct {
	class error
	err   error
}

func (e *classified) Error() string   { return e.err.Error() }
func (e *classified) Unwrap() []error { return []error{e.class, e.err} }
