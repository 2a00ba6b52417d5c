package conversation

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"

	"github.com/corralhq/corral/errdefs"
)

// sealer encrypts conversations' API keys at rest with AES-256-GCM under a
// key derived from the server's secret. A sealed blob is
//
//	version (1 byte, 1) | key fingerprint (8) | nonce (12) | ciphertext+tag
//
// The fingerprint lets a server started with a different secret say so
// instead of failing with an opaque authentication error, and the
// conversation ID is the additional data, so a blob copied onto another row
// does not open.
type sealer struct {
	aead        cipher.AEAD
	fingerprint [8]byte
}

const (
	sealVersion     = 1
	minSecretLength = 16
)

// newSealer derives the encryption key from secret. An empty secret gives a
// nil sealer (API keys are then refused); one shorter than 16 bytes is an
// errdefs.ErrInvalidArgument.
func newSealer(secret string) (*sealer, error) {
	if secret == "" {
		return nil, nil
	}
	if len(secret) < minSecretLength {
		return nil, errdefs.Invalid("weak_secret_key", "CORRAL_SECRET_KEY must be at least %d bytes", minSecretLength)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("corral conversation llm key v1"))
	key := mac.Sum(nil)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secret key: %w", err)
	}
	s := &sealer{aead: aead}
	fp := sha256.Sum256(append([]byte("fingerprint:"), key...))
	copy(s.fingerprint[:], fp[:])
	return s, nil
}

func (s *sealer) seal(conversationID string, plaintext []byte) []byte {
	out := make([]byte, 0, 1+8+12+len(plaintext)+s.aead.Overhead())
	out = append(out, sealVersion)
	out = append(out, s.fingerprint[:]...)
	nonce := make([]byte, s.aead.NonceSize())
	rand.Read(nonce)
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, plaintext, []byte(conversationID))
}

// open decrypts a blob made by seal. s may be nil (no secret configured).
// Errors are errdefs.ErrFailedPrecondition coded "secret_key_missing",
// "secret_key_changed" or "secret_corrupt", with a message that says what
// to do; they never contain the plaintext.
func (s *sealer) open(conversationID string, blob []byte) ([]byte, error) {
	if s == nil {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "secret_key_missing",
			"conversation %s has an encrypted LLM API key but the server has no CORRAL_SECRET_KEY; start it with the key it was created with", conversationID)
	}
	ns := s.aead.NonceSize()
	if len(blob) < 1+8+ns+s.aead.Overhead() || blob[0] != sealVersion {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "secret_corrupt",
			"conversation %s: stored LLM API key is unreadable (unknown format)", conversationID)
	}
	if !bytes.Equal(blob[1:9], s.fingerprint[:]) {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "secret_key_changed",
			"conversation %s: its LLM API key was encrypted with a different CORRAL_SECRET_KEY; restore that key or create a new conversation", conversationID)
	}
	nonce := blob[9 : 9+ns]
	pt, err := s.aead.Open(nil, nonce, blob[9+ns:], []byte(conversationID))
	if err != nil {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "secret_corrupt",
			"conversation %s: stored LLM API key failed authentication (corrupt or moved)", conversationID)
	}
	return pt, nil
}
