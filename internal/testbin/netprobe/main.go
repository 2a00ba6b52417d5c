// Command netprobe is a static test helper copied into sandboxes by the
// network isolation suite (runtimetest.RunIsolation): busybox has no
// abstract unix sockets, and its nc says little about why a dial failed.
//
//	netprobe listen PORT NAME   listen on TCP :PORT (every address) and on the
//	                            abstract unix socket @NAME, print "ready", and
//	                            answer every connection with "netprobe-hello"
//	netprobe dial TARGET...     try each target (tcp:HOST:PORT or unix:@NAME)
//	                            and print "OK TARGET LINE" or "FAIL TARGET ERROR"
//	netprobe addrs              print this sandbox's non-loopback addresses
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// Hello is what a listener answers; a dial reports it back.
const Hello = "netprobe-hello"

func main() { os.Exit(Main(os.Args[1:])) }

// Main runs netprobe with its arguments and returns the exit code.
func Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: netprobe listen PORT NAME | dial TARGET... | addrs")
		return 2
	}
	switch args[0] {
	case "listen":
		if len(args) != 3 {
			return usage()
		}
		return listen(args[1], args[2])
	case "dial":
		// At once, so that targets a firewall drops cost one timeout in all.
		res := make([]string, len(args)-1)
		var wg sync.WaitGroup
		for i, t := range args[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i] = dial(t)
			}()
		}
		wg.Wait()
		for _, r := range res {
			fmt.Println(r)
		}
		return 0
	case "addrs":
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() {
				fmt.Println(ipn.IP.String())
			}
		}
		return 0
	}
	return usage()
}

func usage() int {
	fmt.Fprintln(os.Stderr, "usage: netprobe listen PORT NAME | dial TARGET... | addrs")
	return 2
}

func listen(port, name string) int {
	tcp, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen tcp:", err)
		return 1
	}
	unix, err := net.Listen("unix", "@"+name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen unix:", err)
		return 1
	}
	for _, ln := range []net.Listener{tcp, unix} {
		go func(ln net.Listener) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, Hello)
				c.Close()
			}
		}(ln)
	}
	fmt.Println("ready")
	select {}
}

// dial tries one target; the timeout only keeps a dropping firewall from
// hanging the probe.
func dial(target string) string {
	network, addr, ok := strings.Cut(target, ":")
	if !ok || (network != "tcp" && network != "unix") {
		return "FAIL " + target + " bad target"
	}
	c, err := net.DialTimeout(network, addr, 3*time.Second)
	if err != nil {
		return "FAIL " + target + " " + err.Error()
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "FAIL " + target + " connected, read: " + err.Error()
	}
	return "OK " + target + " " + strings.TrimSpace(line)
}
