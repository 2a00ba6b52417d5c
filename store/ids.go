package store

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// idAlphabet is base32hex in lower case: its characters sort in the same
// order as the values they encode, so IDs sort by their time part.
const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

const randomBits = 50

var idState struct {
	sync.Mutex
	ms, random uint64 // of the last ID made by NewID
}

// NewID returns prefix + "_" + 20 lowercase base32 characters: 10 encode the
// unix time in milliseconds and 10 encode 50 bits from crypto/rand. Within
// one process the IDs strictly increase, even within one millisecond (the
// random part then grows by a random step, as in ULID), so sorting IDs sorts
// by creation. For example NewID("ws") returns something like
// "ws_01k80ok5mj4sb77la8ib".
func NewID(prefix string) string {
	ms := uint64(time.Now().UnixMilli())
	random := random50()

	idState.Lock()
	if ms <= idState.ms {
		// Same millisecond (or the clock stepped back): continue after the
		// last ID instead of going below it.
		ms = idState.ms
		random = idState.random + 1 + random>>(randomBits-24) // step of 1 to 2^24
		if random >= 1<<randomBits {
			ms, random = ms+1, random50()
		}
	}
	idState.ms, idState.random = ms, random
	idState.Unlock()

	return encodeID(prefix, ms, random)
}

// newIDAt makes an ID for a given time, without the in-process ordering.
func newIDAt(prefix string, t time.Time) string {
	return encodeID(prefix, uint64(t.UnixMilli()), random50())
}

func random50() uint64 {
	var b [8]byte
	rand.Read(b[:]) // never fails since Go 1.24
	return binary.BigEndian.Uint64(b[:]) >> (64 - randomBits)
}

// encodeID writes 10 characters of 5 bits for each part: 50 bits of
// milliseconds last until the year 37648.
func encodeID(prefix string, ms, random uint64) string {
	buf := make([]byte, 0, len(prefix)+21)
	buf = append(buf, prefix...)
	buf = append(buf, '_')
	for i := 9; i >= 0; i-- {
		buf = append(buf, idAlphabet[(ms>>(5*uint(i)))&31])
	}
	for i := 9; i >= 0; i-- {
		buf = append(buf, idAlphabet[(random>>(5*uint(i)))&31])
	}
	return string(buf)
}
