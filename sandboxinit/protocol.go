package sandboxinit

import (
	"encoding/json"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// The supervisor protocol. The process driver dials the supervisor's
// socket (SOCK_SEQPACKET, one JSON message per packet) once per command:
//
//	driver → init  {"op":"exec",...} with the command's stdio fds (SCM_RIGHTS):
//	               stdin, stdout, stderr; or one pty slave when TTY is set
//	init → driver  {"op":"started","pid":N}, later {"op":"exit",...}
//	driver → init  {"op":"signal","signal":15} (to the command's process group)
//	               {"op":"kill"} (the command and everything it started)
//
// The stdio fds are the driver's own pipes or pty, so output never passes
// through the supervisor. Closing the connection before the exit is
// reported kills the command's tree, so a driver that dies or gives up
// leaves nothing running. A command that cannot be started is reported as
// "started" followed at once by its exit (127 not found, 126 not runnable).

// Request is a message from the driver.
type Request struct {
	Op     string   `json:"op"` // OpExec, OpSignal or OpKill
	Argv   []string `json:"argv,omitempty"`
	Env    []string `json:"env,omitempty"`
	Dir    string   `json:"dir,omitempty"` // absolute
	TTY    bool     `json:"tty,omitempty"`
	Signal int      `json:"signal,omitempty"`
	// UID and GID, if not 0, are the credentials the command runs with
	// (the supervisor must be root to switch to them).
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
}

// Reply is a message from the supervisor.
type Reply struct {
	Op       string `json:"op"` // OpStarted, OpExit or OpError
	Pid      int    `json:"pid,omitempty"`
	ExitCode int    `json:"exit_code,omitempty"`
	Signal   int    `json:"signal,omitempty"` // the signal that killed it, 0 if it exited
	Error    string `json:"error,omitempty"`
}

// Message ops.
const (
	OpExec    = "exec"
	OpSignal  = "signal"
	OpKill    = "kill"
	OpStarted = "started"
	OpExit    = "exit"
	OpError   = "error"
)

// maxMessage bounds one packet; argv and env of a command fit well within.
const maxMessage = 1 << 20

// Send writes v as one packet on c, passing fds along with it.
func Send(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	if len(b) > maxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), maxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("send message: %w", err)
	}
	return nil
}

// Receive reads one packet from c into v and returns the fds passed with it,
// which the caller owns. It returns io.EOF-wrapping errors when the peer
// closed the connection.
//
// It waits for the packet without holding a buffer, then reads it into one
// of its size: a command's exit is awaited with Receive for as long as the
// command runs, and a buffer of maxMessage held by each waiting command
// made the server's memory grow with the number of commands running.
func Receive(c *net.UnixConn, v any) ([]int, error) {
	size, err := packetSize(c)
	if err != nil {
		return nil, fmt.Errorf("receive message: %w", err)
	}
	buf := make([]byte, max(1, min(size, maxMessage)))
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive message: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("parse control message: %w", err)
		}
		for _, m := range msgs {
			f, err := unix.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, f...)
			}
		}
	}
	if n == 0 {
		closeAll(fds)
		return nil, fmt.Errorf("receive message: %w", io.EOF)
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeAll(fds)
		return nil, fmt.Errorf("decode message: %w", err)
	}
	return fds, nil
}

// packetSize waits until a packet can be read from c and returns its size
// (0 when the peer has closed), without consuming it.
func packetSize(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		// MSG_TRUNC: the packet's real length, not what fit in b.
		n, _, perr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_TRUNC)
		return perr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, perr
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
