package runtime

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/corralhq/corral/errdefs"
	"golang.org/x/sys/unix"
)

// ParseSignal turns "TERM", "SIGTERM", "sigterm" or "15" into "SIGTERM".
func ParseSignal(s string) (Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		name := unix.SignalName(syscall.Signal(n))
		if name == "" {
			return "", errdefs.Invalid("invalid_signal", "unknown signal %q", s)
		}
		return Signal(name), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if unix.SignalNum(name) == 0 {
		return "", errdefs.Invalid("invalid_signal", "unknown signal %q", s)
	}
	return Signal(name), nil
}

// Num is the signal's number on this platform, 0 if unknown.
func (s Signal) Num() syscall.Signal { return unix.SignalNum(string(s)) }

// Number is the signal's number, or errdefs.ErrInvalidArgument coded
// "invalid_signal" if s names no signal. Drivers check a Process.Signal
// argument with it.
func (s Signal) Number() (syscall.Signal, error) {
	n := s.Num()
	if n == 0 {
		return 0, errdefs.Invalid("invalid_signal", "unknown signal %q", s)
	}
	return n, nil
}

// SignalResult builds the ExitResult of a command killed by sig.
func SignalResult(sig syscall.Signal) ExitResult {
	return ExitResult{ExitCode: 128 + int(sig), Signal: Signal(unix.SignalName(sig))}
}

// CleanPath validates a path that a client gave relative to the workspace
// root and returns it cleaned, without a leading "/" ("" for the root
// itself). Absolute paths are read as relative to the workspace root; a path
// that climbs out with ".." is refused with an errdefs.ErrInvalidArgument
// coded "path_escape". Symlinks are the driver's to resolve.
func CleanPath(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", errdefs.Invalid("invalid_path", "path contains a NUL byte")
	}
	for _, part := range strings.Split(strings.ReplaceAll(p, "\\", "/"), "/") {
		if part == ".." {
			return "", errdefs.Invalid("path_escape", "path %q leaves the workspace", p)
		}
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	return c, nil
}

// EscapeError is the error drivers return for a path that leads outside the
// workspace, directly or through a symlink.
func EscapeError(p string) error {
	return errdefs.Invalid("path_escape", "path %q leads outside the workspace", p)
}

// NotADirectoryError is the error drivers return for a path one of whose
// parents is a file.
func NotADirectoryError(p string) error {
	return errdefs.Invalid("not_a_directory", "%q: a parent of this path is a file, not a directory", p)
}

// SpecialFileError is the error drivers return for a FIFO, socket or device
// met where a file, directory or symlink was expected: such files have no
// content that can be read or archived without blocking or harm.
func SpecialFileError(p string) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, "special_file", "%q is a FIFO, socket or device, not a file or directory", p)
}

// Output collects a command's output up to a limit. It is an io.Writer safe
// for concurrent use; writes past the limit are counted and dropped, never
// blocked, so a chatty command never stalls.
type Output struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	limit     int
	truncated bool
}

// NewOutput returns an Output that keeps at most limit bytes (0 = no limit).
func NewOutput(limit int) *Output { return &Output{limit: limit} }

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(p)
	if o.limit > 0 && o.buf.Len()+len(p) > o.limit {
		p = p[:o.limit-o.buf.Len()]
		o.truncated = true
	}
	o.buf.Write(p)
	return n, nil
}

// String returns what was kept.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// Truncated reports whether anything was dropped.
func (o *Output) Truncated() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.truncated
}

// Run starts a command with Exec and waits for it. It is the one-shot path:
// callers set Stdout and Stderr (for example to Outputs).
func Run(ctx context.Context, rt Runtime, id string, spec ExecSpec) (ExitResult, error) {
	p, err := rt.Exec(ctx, id, spec)
	if err != nil {
		return ExitResult{}, err
	}
	res, err := p.Wait()
	if err != nil {
		return ExitResult{}, fmt.Errorf("wait for command in %s: %w", id, err)
	}
	return res, nil
}
