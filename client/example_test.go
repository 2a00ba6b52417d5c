package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/corralhq/corral/api/types"
	"github.com/corralhq/corral/client"
	"github.com/corralhq/corral/internal/testserver"
)

// The examples connect to the server in CORRAL_URL with CORRAL_API_KEY.
// TestExamples runs each of them against a real server.
func connect() *client.Client {
	c, err := client.New(os.Getenv("CORRAL_URL"), os.Getenv("CORRAL_API_KEY"))
	if err != nil {
		log.Fatal(err)
	}
	return c
}

func Example() {
	ctx := context.Background()
	c := connect()
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.ID)

	res, err := c.Run(ctx, ws.ID, client.Cmd{Command: "echo hello from $0"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}

func ExampleClient_CreateWorkspace() {
	ctx := context.Background()
	c := connect()
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{Env: map[string]string{"STAGE": "test"}},
		func(p types.PullProgress) { fmt.Fprintln(os.Stderr, "pull:", p.Status, p.Current, p.Total) })
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.ID)
	for w, err := range c.Workspaces(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(w.ID, w.State)
	}
}

func ExampleClient_Start() {
	ctx := context.Background()
	c := connect()
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.ID)

	var out bytes.Buffer
	p, err := c.Start(ctx, ws.ID, client.Cmd{Command: "tr a-z A-Z", Stdin: bytes.NewBufferString("shout\n"), Stdout: &out, Stderr: os.Stderr})
	if err != nil {
		log.Fatal(err)
	}
	exit, err := p.Wait()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(out.String(), "exit ", exit.ExitCode, "\n")
}

func ExampleClient_CopyIn() {
	ctx := context.Background()
	c := connect()
	ws, err := c.CreateWorkspace(ctx, types.WorkspaceSpec{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, ws.ID)

	src, _ := os.MkdirTemp("", "src")
	defer os.RemoveAll(src)
	_ = os.WriteFile(filepath.Join(src, "main.py"), []byte("print(6*7)\n"), 0o644)
	if err := c.CopyIn(ctx, ws.ID, src, "project"); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Run(ctx, ws.ID, client.Cmd{Command: "cp main.py copy.py", Cwd: "project"}); err != nil {
		log.Fatal(err)
	}
	dst, _ := os.MkdirTemp("", "dst")
	defer os.RemoveAll(dst)
	if err := c.CopyOut(ctx, ws.ID, "project", dst); err != nil {
		log.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dst, "project", "copy.py"))
	fmt.Print(string(b))
	if _, err := c.ReadFile(ctx, ws.ID, "nope"); errors.Is(err, client.ErrNotFound) {
		fmt.Println("nope: not found")
	}
}

func ExampleClient_Events() {
	ctx := context.Background()
	c := connect()
	cv, err := c.CreateConversation(ctx, types.CreateConversationRequest{Workspace: &types.WorkspaceSpec{}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.DeleteWorkspace(ctx, cv.WorkspaceID)
	if _, err := c.Send(ctx, cv.ID, "say hi"); err != nil {
		log.Fatal(err)
	}
	for e, err := range c.Events(ctx, cv.ID, 0) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e.Seq, e.Source, e.Kind)
		var st types.StatePayload
		if e.Kind == types.KindState && json.Unmarshal(e.Payload, &st) == nil && st.State != types.ConversationRunning {
			break // the agent's turn is over
		}
	}
}

// TestExamples runs the examples against a real server (their output
// varies with IDs, so they have no Output comments to check).
func TestExamples(t *testing.T) {
	s := testserver.Start(t)
	t.Setenv("CORRAL_URL", s.URL)
	t.Setenv("CORRAL_API_KEY", s.Key)
	stdout := os.Stdout
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout = w
	defer func() { os.Stdout = stdout }()
	done := make(chan []byte)
	go func() {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r)
		done <- b.Bytes()
	}()
	Example()
	ExampleClient_CreateWorkspace()
	ExampleClient_Start()
	ExampleClient_CopyIn()
	ExampleClient_Events()
	w.Close()
	os.Stdout = stdout
	out := string(<-done)
	for _, want := range []string{"hello from /bin/sh\n", "SHOUT\nexit 0\n", "print(6*7)\nnope: not found\n", "1 user message\n"} {
		if !bytes.Contains([]byte(out), []byte(want)) {
			t.Errorf("examples' output lacks %q:\n%s", want, out)
		}
	}
}
