// Package runtime is the contract between Corral and the engines that run
// workspaces. A driver (runtime/process, runtime/docker, runtime/podman)
// implements Runtime, registers itself by name, and is checked by one
// conformance suite, runtime/runtimetest.
//
// Drivers receive specs whose policy has already been validated and resolved
// by package policy; they translate it into engine settings, and report in
// Capabilities what they can enforce on this host so that nothing is ever
// created that they could not hold to its limits.
//
// Errors are classed with package errdefs: callers test them with errors.Is.
package runtime

import (
	"context"
	"io"
	"io/fs"
	"time"

	"github.com/corralhq/corral/policy"
)

// Runtime runs workspaces. All methods are safe for concurrent use. IDs are
// chosen by the caller (Spec.ID) and are the only handle: a driver keeps its
// own engine IDs to itself.
type Runtime interface {
	// Name is the name the driver was registered under.
	Name() string

	// Capabilities reports what the driver can enforce on this host, as
	// measured when it was opened.
	Capabilities() Capabilities

	// Create makes the workspace's sandbox and its persistent file storage,
	// and leaves it stopped. It fails with errdefs.ErrAlreadyExists if the
	// ID is in use, errdefs.ErrInvalidArgument for a bad spec (for example
	// an image that does not exist) and errdefs.ErrFailedPrecondition for a
	// policy the host cannot enforce. On failure nothing is left behind.
	Create(ctx context.Context, spec Spec) error

	// Start starts a created or stopped workspace. Idempotent: starting a
	// running workspace succeeds. errdefs.ErrNotFound if it does not exist.
	Start(ctx context.Context, id string) error

	// Stop kills every process in the workspace and leaves its files.
	// Idempotent: stopping a stopped workspace succeeds.
	// errdefs.ErrNotFound if it does not exist.
	Stop(ctx context.Context, id string) error

	// Remove stops the workspace and deletes it with its files and
	// everything the driver made for it. Idempotent: removing a workspace
	// that does not exist succeeds.
	Remove(ctx context.Context, id string) error

	// Inspect reports the workspace's state. errdefs.ErrNotFound if it does
	// not exist.
	Inspect(ctx context.Context, id string) (Status, error)

	// List returns every workspace this driver holds on this host that was
	// created by the server identified by Config.ServerID, running or not,
	// so the server can reconcile after a restart.
	List(ctx context.Context) ([]Status, error)

	// Exec starts a command in a running workspace and returns once it has
	// started; the caller must call Process.Wait. Cancelling ctx kills the
	// command and every process it started. errdefs.ErrNotFound if the
	// workspace does not exist, errdefs.ErrFailedPrecondition if it is not
	// running, errdefs.ErrInvalidArgument for a bad ExecSpec (including a
	// Cwd outside the workspace). A command that cannot be found or run is
	// not an error here: it exits with code 127 or 126 as a shell would.
	Exec(ctx context.Context, id string, spec ExecSpec) (Process, error)

	// CopyIn extracts a tar stream into the directory dir, a path relative
	// to the workspace root ("" or "." for the root) that is created if
	// missing. Entries are resolved inside the workspace: an entry or a
	// symlink that would lead outside it fails the whole call with an
	// errdefs.ErrInvalidArgument coded "path_escape". The workspace may be
	// running or stopped.
	CopyIn(ctx context.Context, id, dir string, tar io.Reader) error

	// CopyOut returns a tar stream of the file or directory at path
	// (relative to the workspace root), whose entries are named relative to
	// path's parent: CopyOut("src") yields "src/", "src/main.go"... Symlinks
	// are stored as symlinks, never followed. errdefs.ErrNotFound if path
	// does not exist; "path_escape" as for CopyIn. The caller closes the
	// stream.
	CopyOut(ctx context.Context, id, path string) (io.ReadCloser, error)

	// Close releases the driver's connections. Workspaces keep running.
	Close() error
}

// Spec describes a workspace to create.
type Spec struct {
	ID     string            // chosen by the caller; [a-z0-9_-], at most 64 bytes
	Image  string            // container image; ignored by the process driver
	Env    map[string]string // environment for every command
	Policy policy.Policy     // already resolved and checked against Capabilities
	// ProxySocket is, for network mode allowlist, the host path of the unix
	// socket of the egress proxy serving this workspace. The driver makes it
	// reachable inside the sandbox and points HTTP_PROXY/HTTPS_PROXY/ALL_PROXY
	// at a forwarder listening on 127.0.0.1 that relays to it.
	ProxySocket string
	// Labels are stored with the workspace by drivers that can (container
	// labels), for operators; the driver adds its own ownership labels.
	Labels map[string]string
}

// State is the state of a workspace as its driver sees it.
type State string

const (
	StateCreated State = "created" // exists, never started
	StateRunning State = "running"
	StateStopped State = "stopped"
)

// Status is what Inspect reports.
type Status struct {
	ID        string    `json:"id"`
	State     State     `json:"state"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Detail carries driver facts for operators (container ID, PID...).
	Detail map[string]string `json:"detail,omitempty"`
}

// ExecSpec describes a command to run in a workspace.
type ExecSpec struct {
	Argv []string          // required; Argv[0] is looked up in PATH
	Cwd  string            // relative to the workspace root; "" = root
	Env  map[string]string // added to the workspace's environment
	// TTY runs the command on a pseudo-terminal: Stdout receives its
	// output, Stderr is unused, and Process.Resize works.
	TTY  bool
	Size WindowSize // initial terminal size when TTY is set
	// Timeout kills the command and all it started after this long; the
	// exit result then has TimedOut set. 0 means no timeout.
	Timeout time.Duration
	// Stdin feeds the command until it returns io.EOF, which closes the
	// command's stdin. nil means an empty stdin.
	Stdin  io.Reader
	Stdout io.Writer // nil discards
	Stderr io.Writer // nil discards
}

// WindowSize is a terminal size in character cells.
type WindowSize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// Process is a command started by Exec.
type Process interface {
	// Wait blocks until the command has exited, every byte of its output
	// has been written to ExecSpec.Stdout and ExecSpec.Stderr, and its
	// resources are released. It returns the same result to every caller.
	// An error means the result could not be learned (the engine went
	// away), not that the command failed.
	Wait() (ExitResult, error)

	// Signal sends sig to the command's process group. Sending to an exited
	// command is not an error.
	Signal(ctx context.Context, sig Signal) error

	// Resize changes the terminal size of a TTY command;
	// errdefs.ErrFailedPrecondition if the command has no TTY.
	Resize(ctx context.Context, size WindowSize) error
}

// ExitResult is how a command ended.
type ExitResult struct {
	ExitCode  int    `json:"exit_code"` // 128+n when killed by signal n
	Signal    Signal `json:"signal"`    // "SIGKILL"..., or "" if it exited
	TimedOut  bool   `json:"timed_out"`
	OOMKilled bool   `json:"oom_killed"`
}

// Signal is a signal name as in "SIGTERM". ParseSignal accepts "TERM", "15"...
type Signal string

// Capabilities is what a driver can do on this host, measured when it is
// opened.
type Capabilities struct {
	// Policy says which limits and network modes it can enforce.
	Policy policy.Support `json:"policy"`
	// TTY is true if Exec supports ExecSpec.TTY.
	TTY bool `json:"tty"`
	// Isolation describes in a few words how workspaces are isolated here,
	// e.g. "container (rootless)" or "namespaces: mount, pid, net".
	Isolation string `json:"isolation"`
}

// ImagePuller is implemented by drivers that run images. The server calls
// Pull before Create so it can report progress to the client; Create still
// pulls a missing image by itself when called without it.
type ImagePuller interface {
	// Pull makes image present on the host, pulling it if it is missing,
	// and calls progress (if not nil) with each status update. An image
	// that does not exist fails with errdefs.ErrInvalidArgument coded
	// "image_not_found". Idempotent: a present image is not pulled again.
	Pull(ctx context.Context, image string, progress func(PullProgress)) error
}

// PullProgress is one status update of an image pull.
type PullProgress struct {
	Status  string `json:"status"`            // e.g. "Downloading", "Pull complete"
	Layer   string `json:"layer,omitempty"`   // layer ID, if the update is about one
	Current int64  `json:"current,omitempty"` // bytes done
	Total   int64  `json:"total,omitempty"`   // bytes in all, if known
}

// FileWriter is implemented by drivers that can store one file from a
// stream of unknown length without first spooling it (a tar header needs
// the length). The server uses it for single-file uploads when present.
type FileWriter interface {
	// WriteFile stores r as the file at path (relative to the workspace
	// root), creating missing parents, with permissions mode. It is whole
	// or absent: the content goes to a temporary name in the same
	// directory and is renamed over path only once r has ended and the
	// data is on disk, so an error (r failing midway, a full disk,
	// cancellation) leaves what was at path before untouched and no
	// temporary behind. It returns the bytes written. Errors as for
	// CopyIn; errdefs.ErrInsufficientStorage if the disk is full;
	// errdefs.ErrConflict if path is a directory.
	WriteFile(ctx context.Context, id, path string, r io.Reader, mode fs.FileMode) (int64, error)
}

// PathRemover is implemented by drivers that can delete a path inside a
// workspace directly and safely (symlinks resolved inside the workspace).
// Without it the server deletes paths by running rm in the sandbox.
type PathRemover interface {
	// RemovePath deletes the file or directory tree at path, relative to
	// the workspace root; the root itself cannot be removed
	// (errdefs.ErrInvalidArgument). A symlink is removed, not followed.
	// Idempotent: a missing path succeeds. "path_escape" as for CopyIn.
	RemovePath(ctx context.Context, id, path string) error
}

// LeftoverLister is implemented by drivers whose Create or Remove, cut off
// by a crash of the server, can leave resources behind that List does not
// report: a workspace directory without its metadata, a volume without its
// container. At start-up the server passes every ID it returns that it has
// no workspace for to Remove, which must then remove what is left.
type LeftoverLister interface {
	// Leftovers returns the IDs of workspaces this server (Config.ServerID)
	// holds incomplete resources for. It must not be called while a Create
	// or Remove is under way.
	Leftovers(ctx context.Context) ([]string, error)
}
