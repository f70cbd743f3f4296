package main

// The peer: vcsim's handler wrapped so that disk-changing operations also change the
// datastore files the way ESXi does (snapshots.go, reconfig.go), CBT is answered
// (cbt.go) and tests can drive the guest and inject faults (control.go).

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
)

type peer struct {
	diskMB int64
	mu     sync.Mutex // serialises every disk-file operation and the CBT state
	cbt    *cbtStore
	failMu sync.Mutex
	fail   struct {
		status int
		count  int
	}
	cbtFault map[string]string // vm -> fault type for its next changeId query
}

func newPeer(diskMB int64, cbtDir string) *peer {
	return &peer{diskMB: diskMB, cbt: newCBTStore(cbtDir), cbtFault: map[string]string{}}
}

func (p *peer) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/hamal/") {
			p.control(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/sdk") && p.failing(w) {
			return
		}
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		switch op(body) {
		case "QueryChangedDiskAreas":
			p.queryChangedDiskAreas(w, body)
		case "CreateSnapshot_Task":
			p.createSnapshot(w, r, next, body)
		case "RemoveSnapshot_Task":
			p.removeSnapshot(w, r, next, body)
		case "RemoveAllSnapshots_Task":
			p.removeAllSnapshots(w, r, next, body)
		case "ReconfigVM_Task":
			p.reconfig(w, r, next, body)
		default:
			next.ServeHTTP(w, r)
		}
	})
}
