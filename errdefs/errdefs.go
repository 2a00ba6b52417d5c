// Package errdefs holds Corral's error classes. Every layer wraps its errors
// around one of these classes so that callers can test them with errors.Is and
// the API can map them to HTTP status codes in one place.
package errdefs

import (
	"errors"
	"fmt"
)

// The error classes. Check them with errors.Is; never compare strings.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrConflict           = errors.New("conflict")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrNotImplemented     = errors.New("not implemented")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrTooLarge           = errors.New("too large")
	ErrUnavailable        = errors.New("unavailable")
	// ErrInsufficientStorage: the disk that would hold the data is full
	// (or its quota is used up); nothing partial was stored.
	ErrInsufficientStorage = errors.New("insufficient storage")
)

// Error is an error with a class and a stable, machine-readable code that
// clients can switch on (for example "path_escape" or "unsupported_limit").
type Error struct {
	Class   error  // one of the Err* classes above
	Code    string // stable snake_case code; empty means the class's default
	Message string // for humans
}

func (e *Error) Error() string { return e.Message }

// Unwrap makes errors.Is(err, class) true.
func (e *Error) Unwrap() error { return e.Class }

// New returns an error of the given class with a stable code and a message.
func New(class error, code, format string, args ...any) error {
	return &Error{Class: class, Code: code, Message: fmt.Sprintf(format, args...)}
}

// NotFound returns an ErrNotFound with the code "not_found".
func NotFound(format string, args ...any) error {
	return New(ErrNotFound, "not_found", format, args...)
}

// Invalid returns an ErrInvalidArgument with the given code.
func Invalid(code, format string, args ...any) error {
	return New(ErrInvalidArgument, code, format, args...)
}

// Code returns the stable code of err: the Code of the first *Error in its
// chain, or the default code of its class, or "internal".
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return e.Code
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

var classes = []struct {
	err  error
	code string
}{
	{ErrNotFound, "not_found"},
	{ErrAlreadyExists, "already_exists"},
	{ErrInvalidArgument, "invalid_argument"},
	{ErrConflict, "conflict"},
	{ErrFailedPrecondition, "failed_precondition"},
	{ErrNotImplemented, "not_implemented"},
	{ErrUnauthenticated, "unauthenticated"},
	{ErrTooLarge, "too_large"},
	{ErrUnavailable, "unavailable"},
	{ErrInsufficientStorage, "insufficient_storage"},
}
