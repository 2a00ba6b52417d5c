// Package client is the Go SDK of Corral: workspaces, commands, files and
// agent conversations on a Corral server, over its HTTP and WebSocket API.
//
// # Connecting
//
// A Client holds the server's URL and an API key (made by the operator
// with `corral keys create --user NAME`). Every call takes a context.
//
//	c, err := client.New("http://127.0.0.1:8080", os.Getenv("CORRAL_API_KEY"))
//
// # Workspaces
//
// A workspace is an isolated sandbox with its own files. Create one, use
// it, delete it:
//
//	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{
//		Limits: policy.Limits{Memory: 512 << 20},
//	}, nil)
//	defer c.DeleteWorkspace(ctx, ws.ID)
//
// The last argument of CreateWorkspace, if not nil, is called with the
// image pull's progress. Workspaces lists them as an iterator:
//
//	for ws, err := range c.Workspaces(ctx) { ... }
//
// # Commands
//
// Run runs a command to completion and returns its exit code and output:
//
//	res, err := c.Run(ctx, ws.ID, client.Cmd{Command: "python3 -V"})
//	fmt.Print(res.Stdout)
//
// Start runs one over a WebSocket with streamed input and output, a
// terminal if asked (Cmd.TTY, Process.Resize) and signals:
//
//	p, err := c.Start(ctx, ws.ID, client.Cmd{Argv: []string{"sh"}, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
//	exit, err := p.Wait()
//
// # Files
//
// WriteFile streams an io.Reader in, OpenFile and ReadFile read back, Stat,
// ListDir and Remove do what they say. CopyIn and CopyOut copy whole local
// directories in and out as tar streams; ArchiveIn and ArchiveOut give the
// raw tar streams.
//
// # Conversations
//
// A conversation is an agent working in a workspace. Send it a message and
// follow what it does:
//
//	cv, err := c.CreateConversation(ctx, types.CreateConversationRequest{WorkspaceID: ws.ID})
//	_, err = c.Send(ctx, cv.ID, "write a haiku to haiku.txt")
//	for e, err := range c.Events(ctx, cv.ID, 0) { ... }
//
// Events yields every event once and in order, reconnecting by itself
// after a dropped connection or a server restart.
//
// # Errors and retries
//
// An error answer of the server is an *Error with its stable Code and
// HTTP Status; test its class with errors.Is (ErrNotFound,
// ErrUnauthenticated, ErrInvalidArgument, ErrUnavailable...). Calls are
// retried with backoff and jitter when that is safe: reads, writes of whole
// files and deletions after transient failures, anything after a 429 or
// 503 (honouring Retry-After); never a call that may have done something
// when its outcome is unknown (a command run, a message sent, a workspace
// created whose connection broke). See Retry.
//
// Request and answer bodies are the types of package
// github.com/corralhq/corral/api/types, the server's wire format.
package client
