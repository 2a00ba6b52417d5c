// Command corral serves Corral's HTTP + WebSocket API and manages its keys.
//
//	corral serve --runtime process --addr 127.0.0.1:8080 --data-dir ./data
//	corral keys create --user alice
//	corral init            (PID 1 inside sandboxes; not for humans)
package main

import (
	"fmt"
	"os"

	"github.com/corralhq/corral/sandboxinit"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "init":
		os.Exit(sandboxinit.Main(os.Args[2:]))
	default:
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: corral <command> [flags]

commands:
  serve    run the API server
  keys     create, list and revoke API keys
  init     PID 1 inside sandboxes (used by the runtimes)`)
}
