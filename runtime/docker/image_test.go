package docker

import (
	"context"
	"errors"
	"testing"

	"github.com/corralhq/corral/errdefs"
)

// A pull failure is classed by what it means to the client: the image does
// not exist (400), the registry cannot be reached now (503), or the request
// went away (unclassed).
func TestPullErrClasses(t *testing.T) {
	for _, c := range []struct {
		msg  error
		want error
		code string
	}{
		{errors.New("manifest unknown: manifest unknown"), errdefs.ErrInvalidArgument, "image_not_found"},
		{errors.New("pull access denied for nope, repository does not exist"), errdefs.ErrInvalidArgument, "image_not_found"},
		{errors.New(`Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host`), errdefs.ErrUnavailable, "image_pull_failed"},
		{errors.New("received unexpected HTTP status: 503 Service Unavailable"), errdefs.ErrUnavailable, "image_pull_failed"},
	} {
		err := pullErr("img", c.msg)
		if !errors.Is(err, c.want) || errdefs.Code(err) != c.code {
			t.Errorf("pullErr(%q) = %v (code %s), want %v %s", c.msg, err, errdefs.Code(err), c.want, c.code)
		}
	}
	if err := pullErr("img", context.Canceled); !errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("cancelled pull = %v", err)
	}
}
