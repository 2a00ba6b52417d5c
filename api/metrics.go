package api

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
)

// metrics keeps request counts and latency histograms per route and serves
// them in the Prometheus text format. Small enough not to need a client
// library.
type metrics struct {
	mu    sync.Mutex
	start time.Time
	reqs  map[reqKey]*histogram
}

type reqKey struct {
	method, route string
	status        int
}

var buckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	n      uint64
}

func newMetrics() *metrics { return &metrics{start: time.Now(), reqs: map[reqKey]*histogram{}} }

// knownMethods are the methods kept as labels; any other is counted as
// OTHER, so that clients cannot grow the metrics without bound by making
// up methods (the label set is kept forever, before authentication).
var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
}

func (m *metrics) observe(method, route string, status int, d time.Duration) {
	if !knownMethods[method] {
		method = "OTHER"
	}
	sec := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	k := reqKey{method, route, status}
	h := m.reqs[k]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(buckets))}
		m.reqs[k] = h
	}
	for i, b := range buckets {
		if sec <= b {
			h.counts[i]++
			break
		}
	}
	h.sum += sec
	h.n++
}

func (m *metrics) serve(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	keys := make([]reqKey, 0, len(m.reqs))
	for k := range m.reqs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.route != b.route {
			return a.route < b.route
		}
		if a.method != b.method {
			return a.method < b.method
		}
		return a.status < b.status
	})
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP corral_uptime_seconds Seconds since the server started.\n# TYPE corral_uptime_seconds gauge\ncorral_uptime_seconds %g\n", time.Since(m.start).Seconds())
	fmt.Fprintln(w, "# HELP corral_http_request_duration_seconds HTTP request latency by route and status.")
	fmt.Fprintln(w, "# TYPE corral_http_request_duration_seconds histogram")
	for _, k := range keys {
		h := m.reqs[k]
		labels := fmt.Sprintf(`method=%q,route=%q,status="%d"`, k.method, k.route, k.status)
		var cum uint64
		for i, b := range buckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "corral_http_request_duration_seconds_bucket{%s,le=%q} %d\n", labels, strconv.FormatFloat(b, 'g', -1, 64), cum)
		}
		fmt.Fprintf(w, "corral_http_request_duration_seconds_bucket{%s,le=\"+Inf\"} %d\n", labels, h.n)
		fmt.Fprintf(w, "corral_http_request_duration_seconds_sum{%s} %g\n", labels, h.sum)
		fmt.Fprintf(w, "corral_http_request_duration_seconds_count{%s} %d\n", labels, h.n)
	}
	m.mu.Unlock()
}
