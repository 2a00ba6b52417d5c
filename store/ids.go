package store

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// idAlphabet is base32hex in lower case: its characters sort in the same
// order as the values they encode, so IDs sort by their time part.
const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

// NewID returns prefix + "_" + 20 lowercase base32 characters: 10 encode the
// current unix time in milliseconds (so IDs made later sort later, to the
// millisecond) and 10 encode 50 bits from crypto/rand. For example
// NewID("ws") returns something like "ws_01jd5k2m3n8f4q7r9s2t".
func NewID(prefix string) string {
	return newIDAt(prefix, time.Now())
}

func newIDAt(prefix string, t time.Time) string {
	var b [8]byte
	rand.Read(b[:]) // never fails since Go 1.24
	random := binary.BigEndian.Uint64(b[:])
	ms := uint64(t.UnixMilli())

	buf := make([]byte, 0, len(prefix)+21)
	buf = append(buf, prefix...)
	buf = append(buf, '_')
	// 10 characters of 5 bits: 50 bits of milliseconds last until the year
	// 37648, and 50 random bits make a collision within one millisecond
	// vanishingly unlikely.
	for i := 9; i >= 0; i-- {
		buf = append(buf, idAlphabet[(ms>>(5*uint(i)))&31])
	}
	for i := 9; i >= 0; i-- {
		buf = append(buf, idAlphabet[(random>>(5*uint(i)))&31])
	}
	return string(buf)
}
