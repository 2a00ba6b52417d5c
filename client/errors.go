package client

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/coder/websocket"

	"github.com/corralhq/corral/errdefs"
)

// The error classes a call's error can be tested against with errors.Is.
// They are the server's own classes (package errdefs).
var (
	ErrNotFound           = errdefs.ErrNotFound           // 404, socket close 4404
	ErrInvalidArgument    = errdefs.ErrInvalidArgument    // 400, socket close 4400
	ErrConflict           = errdefs.ErrConflict           // 409
	ErrFailedPrecondition = errdefs.ErrFailedPrecondition // 422: e.g. a limit the runtime cannot enforce
	ErrUnauthenticated    = errdefs.ErrUnauthenticated    // 401, socket close 4401
	ErrTooLarge           = errdefs.ErrTooLarge           // 413: over a size limit or quota
	ErrNotImplemented     = errdefs.ErrNotImplemented     // 501
	ErrUnavailable        = errdefs.ErrUnavailable        // 503, 429, 502, 504: try again later
)

// Error is an error answer of the server. Code is the stable code of the
// README's error-code table ("not_found", "path_escape"...); Status the
// HTTP status, or for a WebSocket the status its close code stands for.
// errors.Is(err, ErrNotFound) and the like test its class; errors.As gives
// the Error. Two codes come from the client itself, not the server:
// "is_a_directory" (OpenFile of a directory) and "workspace_error"
// (WaitReady of a workspace in state error).
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("corral: %s (%d)", e.Code, e.Status)
	}
	return fmt.Sprintf("corral: %s: %s (%d)", e.Code, e.Message, e.Status)
}

// Unwrap returns the class of the status.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusBadRequest:
		return ErrInvalidArgument
	case http.StatusConflict:
		return ErrConflict
	case http.StatusUnprocessableEntity:
		return ErrFailedPrecondition
	case http.StatusUnauthorized:
		return ErrUnauthenticated
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	case http.StatusNotImplemented:
		return ErrNotImplemented
	case http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusBadGateway, http.StatusGatewayTimeout:
		return ErrUnavailable
	}
	return nil
}

// Close codes of Corral's WebSockets (README, "WebSocket close codes").
const (
	closeResume          websocket.StatusCode = 4100
	closeBadRequest      websocket.StatusCode = 4400
	closeUnauthenticated websocket.StatusCode = 4401
	closeNotFound        websocket.StatusCode = 4404
)

// closeError turns a socket's close into an *Error, preferring the detail
// of the error frame the server sent before it (d, may be nil). It returns
// nil for a close that is not an error.
func closeError(err error, d *Error) error {
	code := websocket.CloseStatus(err)
	status := 0
	switch code {
	case closeBadRequest:
		status = http.StatusBadRequest
	case closeUnauthenticated:
		status = http.StatusUnauthorized
	case closeNotFound:
		status = http.StatusNotFound
	case websocket.StatusInternalError:
		status = http.StatusInternalServerError
	default:
		if d != nil {
			return d
		}
		return nil
	}
	if d != nil {
		d.Status = status
		return d
	}
	var ce websocket.CloseError
	errors.As(err, &ce)
	return &Error{Status: status, Code: ce.Reason, Message: "socket closed with " + ce.Code.String()}
}
