// Command corral serves Corral's HTTP + WebSocket API, manages its keys,
// and is the client of a server:
//
//	corral serve --runtime process --addr 127.0.0.1:8080 --data-dir ./data
//	corral keys create --user alice
//	corral login http://127.0.0.1:8080
//	corral ws create; corral exec -it ws_... -- sh; corral cp ./src ws_...:
//	corral load --url http://127.0.0.1:8080 --keys KEY --users 20 --duration 60s
//	corral init            (PID 1 inside sandboxes; not for humans)
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/corralhq/corral/sandboxinit"

	// The runtimes register themselves.
	_ "github.com/corralhq/corral/runtime/docker"
	_ "github.com/corralhq/corral/runtime/podman"
	_ "github.com/corralhq/corral/runtime/process"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "keys":
		err = keys(os.Args[2:])
	case "login":
		err = login(os.Args[2:])
	case "ws", "workspace", "workspaces":
		err = wsCommand(os.Args[2:])
	case "exec":
		err = execCommand(os.Args[2:])
	case "cp":
		err = cpCommand(os.Args[2:])
	case "chat":
		err = chatCommand(os.Args[2:])
	case "conversation", "conversations":
		err = conversationCommand(os.Args[2:])
	case "completion":
		err = completionCommand(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "init":
		os.Exit(sandboxinit.Main(os.Args[2:]))
	case "version", "--version":
		fmt.Println(version)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "corral: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	var code exitCode
	switch {
	case err == nil:
	case errors.As(err, &code):
		os.Exit(int(code))
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "corral:", describeError(err))
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: corral <command> [flags]

Use a Corral server (log in once, or set CORRAL_URL and CORRAL_API_KEY):
  login URL            store the server's URL and your API key
  ws                   create, list (ls), show (get) and delete (rm) workspaces
  exec [-it] ID -- CMD run a command in a workspace; -it for an interactive terminal
  cp SRC DST           copy files and directories in and out (ID:PATH is remote)
  chat "MESSAGE"       give an agent a task and watch it work
  conversation         follow a conversation's events, or list conversations
  completion bash|zsh  print a shell completion script

Run a server (on its host):
  serve                run the API server            (corral serve -h for flags)
  keys                 create, list and revoke API keys (corral keys -h)
  load                 run a mixed workload against a server and report (corral load -h)

  version              print the version
  init                 PID 1 inside sandboxes (run by the runtimes, not by hand)

Listings and results take -o json. Errors go to stderr with the server's
code; exec exits with the remote command's status.`)
}

// env returns the environment variable name's value, or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
