package procnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func TestListening(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	if !Listening(os.Getpid(), addr) {
		t.Fatalf("Listening(%s) = false for this process's own listener", addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitListening(ctx, os.Getpid(), addr, func() bool { return true }); err != nil {
		t.Fatalf("WaitListening: %v", err)
	}
	ln.Close()
	if Listening(os.Getpid(), addr) {
		t.Fatalf("Listening(%s) = true after Close", addr)
	}
	if err := WaitListening(ctx, os.Getpid(), addr, func() bool { return false }); !errors.Is(err, ErrExited) {
		t.Fatalf("WaitListening with a dead process = %v, want ErrExited", err)
	}
	if Listening(0, addr) || Listening(os.Getpid(), netip.MustParseAddrPort("[::1]:80")) {
		t.Fatal("Listening accepted a bad pid or an IPv6 address")
	}
}
