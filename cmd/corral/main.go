// Command corral serves Corral's HTTP + WebSocket API and manages its keys.
//
//	corral serve --runtime process --addr 127.0.0.1:8080 --data-dir ./data
//	corral keys create --user alice
//	corral load --url http://127.0.0.1:8080 --keys KEY --users 20 --duration 60s
//	corral init            (PID 1 inside sandboxes; not for humans)
package main

import (
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "corral:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: corral <command> [flags]

commands:
  serve    run the API server            (corral serve -h for flags)
  keys     create, list and revoke API keys (corral keys -h)
  load     run a mixed workload against a server and report (corral load -h)
  version  print the version
  init     PID 1 inside sandboxes (run by the runtimes, not by hand)`)
}

// env returns the environment variable name's value, or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
