package api

import (
	"strings"

	"github.com/corralhq/corral/errdefs"
)

// checkCursor validates a list's ?after= cursor: "" or an ID with the
// given prefix (store.NewID's shape: prefix, "_", 20 base32hex
// characters). A malformed cursor is a client's mistake, answered 400
// invalid_after rather than with an empty page that looks like the end.
func checkCursor(after, prefix string) error {
	if after == "" {
		return nil
	}
	rest, ok := strings.CutPrefix(after, prefix+"_")
	if ok && len(rest) == 20 && strings.Trim(rest, "0123456789abcdefghijklmnopqrstuv") == "" {
		return nil
	}
	return errdefs.Invalid("invalid_after", "after must be the next_after of a previous page (an ID like %s_01k80ok5mj4sb77la8ib)", prefix)
}
