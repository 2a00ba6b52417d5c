package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/corralhq/corral/errdefs"
)

// CodeInvalidLimit is the code of a duration or size that is not a valid,
// representable value: negative, malformed, or too large to convert (a
// JSON number like 1e308 or 9223372037 seconds). Values that convert but
// exceed the server's maximum are refused later by Config.Resolve with
// "limit_exceeds_max".
const CodeInvalidLimit = "invalid_limit"

// maxBytes is the largest size accepted anywhere (4 EiB): far above any real
// limit, and far enough below math.MaxInt64 that sums and conversions to
// other integer types cannot overflow.
const maxBytes = 1 << 62

// isJSONNumber reports whether data is a JSON number rather than a string.
func isJSONNumber(data []byte) bool {
	data = bytes.TrimSpace(data)
	return len(data) > 0 && (data[0] == '-' || data[0] >= '0' && data[0] <= '9')
}

// Bytes is a size in bytes. In JSON it is a number of bytes or a string with a
// binary or decimal unit: "256MiB", "1GiB", "512k", "100MB".
type Bytes int64

var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1000, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1000 * 1000, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1000 * 1000 * 1000, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1000 * 1000 * 1000 * 1000, "tib": 1 << 40,
}

// ParseBytes parses "256MiB", "1g", "1024".
func ParseBytes(s string) (Bytes, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := byteUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("invalid size %q (want e.g. 256MiB, 1GiB)", s)
	}
	// A whole number of bytes is read exactly: through a float64, sizes
	// past 2^53 would change on their way back from String.
	if n, err := strconv.ParseInt(num, 10, 64); err == nil && mult == 1 {
		if n > 1<<62 {
			return 0, fmt.Errorf("invalid size %q", s)
		}
		return Bytes(n), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(mult) > maxBytes {
		return 0, fmt.Errorf("invalid size %q (at most 4EiB)", s)
	}
	return Bytes(f * float64(mult)), nil
}

// String formats b with the largest binary unit that divides it.
func (b Bytes) String() string {
	for _, u := range []struct {
		s string
		n int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.n == 0 {
			return strconv.FormatInt(int64(b)/u.n, 10) + u.s
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads a whole, non-negative number of bytes up to 4 EiB, or
// a string ParseBytes accepts. Every other value is refused with
// errdefs.ErrInvalidArgument coded "invalid_limit", before any conversion
// can wrap around.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if isJSONNumber(data) {
		raw := string(bytes.TrimSpace(data))
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil || f < 0 || f > maxBytes || f != math.Trunc(f) {
			return errdefs.Invalid(CodeInvalidLimit, "size %s is not a whole number of bytes from 0 to 4EiB", raw)
		}
		*b = Bytes(f)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errdefs.Invalid(CodeInvalidLimit, "size must be a number of bytes or a string like \"256MiB\"")
	}
	v, err := ParseBytes(s)
	if err != nil {
		return errdefs.Invalid(CodeInvalidLimit, "%v", err)
	}
	*b = v
	return nil
}

// Duration is a time.Duration that reads and writes Go duration strings
// ("30s", "15m") in JSON; a bare number is taken as seconds.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// maxDurationSeconds is the longest duration a JSON number may give: about
// 292 years, the range of time.Duration. Longer ones would wrap around to a
// negative duration on conversion.
const maxDurationSeconds = float64(math.MaxInt64) / float64(time.Second)

// UnmarshalJSON reads a Go duration string ("30s", "15m") or a number of
// seconds. Negative, malformed and unrepresentable values (1e308,
// 9223372037 seconds) are refused with errdefs.ErrInvalidArgument coded
// "invalid_limit", before any conversion can wrap around.
func (d *Duration) UnmarshalJSON(data []byte) error {
	if isJSONNumber(data) {
		raw := string(bytes.TrimSpace(data))
		secs, err := strconv.ParseFloat(raw, 64)
		ns := secs * float64(time.Second)
		// >= : float64(math.MaxInt64) rounds up to 2^63, itself out of range.
		if err != nil || secs < 0 || ns >= float64(math.MaxInt64) {
			return errdefs.Invalid(CodeInvalidLimit, "duration %s is not a number of seconds from 0 to %.0f", raw, maxDurationSeconds)
		}
		*d = Duration(ns)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errdefs.Invalid(CodeInvalidLimit, "duration must be a string like \"30s\" or a number of seconds")
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return errdefs.Invalid(CodeInvalidLimit, "invalid duration %q (want e.g. 30s, 15m; not negative, at most 2562047h)", s)
	}
	*d = Duration(v)
	return nil
}
