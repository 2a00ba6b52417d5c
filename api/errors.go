package api

import (
	"errors"
	"net/http"

	"github.com/corralhq/corral/errdefs"
)

// statusOf maps an error class to an HTTP status. This is the one place
// where errors become status codes.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		return http.StatusUnprocessableEntity
	case errors.Is(err, errdefs.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, errRequestTimeout):
		return http.StatusRequestTimeout
	case errors.Is(err, errdefs.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errdefs.ErrNotImplemented):
		return http.StatusNotImplemented
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, errdefs.ErrInsufficientStorage):
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}

// ErrorBody is the JSON shape of every error answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a stable code and a message for humans.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// internalError is what clients see of a 500: the details are in the log.
var internalError = ErrorDetail{Code: "internal", Message: "internal error; see the server log"}

// publicError returns err's status and what a client may see of it. Server
// errors are logged (client errors are not), and a 500's details are
// replaced by internalError.
func (s *Server) publicError(r *http.Request, err error) (int, ErrorDetail) {
	err = shutdownCause(r, err)
	status := statusOf(err)
	d := ErrorDetail{Code: errdefs.Code(err), Message: err.Error()}
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		d = serverErrorDetail(status, err)
	}
	return status, d
}

// serverErrorDetail is what a client sees of a server-side error: its
// code, and the message of the classed error at its root (written for
// clients, e.g. "the docker engine is not answering"), never the wrapped
// chain, which can carry engine URLs, socket paths and host details.
func serverErrorDetail(status int, err error) ErrorDetail {
	var e *errdefs.Error
	if status == http.StatusInternalServerError || !errors.As(err, &e) {
		if status == http.StatusInternalServerError {
			return internalError
		}
		return ErrorDetail{Code: errdefs.Code(err), Message: http.StatusText(status) + "; see the server log"}
	}
	return ErrorDetail{Code: errdefs.Code(err), Message: e.Message}
}

// writeError answers with err's status and code.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, d := s.publicError(r, err)
	writeJSON(w, status, ErrorBody{Error: d})
}
