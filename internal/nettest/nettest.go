// Package nettest finds what a server's open network leaves on the host: its
// firewall table and the interfaces named with its prefix. Driver tests use
// it to prove that nothing is left behind.
package nettest

import (
	"errors"
	"net"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/corralhq/corral/runtime/firewall"
)

// Leftovers describes the firewall table and interfaces of serverID that
// still exist on this host; none if the server left nothing.
func Leftovers(serverID string) []string {
	var left []string
	if c, err := nftables.New(); err == nil {
		if _, err := c.ListTableOfFamily(firewall.TableName(serverID), nftables.TableFamilyINet); err == nil {
			left = append(left, "nftables table inet "+firewall.TableName(serverID))
		} else if !errors.Is(err, unix.ENOENT) {
			left = append(left, "nftables: "+err.Error())
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return append(left, "list interfaces: "+err.Error())
	}
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, firewall.IfacePrefix(serverID)) {
			left = append(left, "interface "+i.Name)
		}
	}
	return left
}
