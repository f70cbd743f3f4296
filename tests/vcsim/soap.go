package main

// SOAP plumbing: recognising operations in request bodies, answering faults the way
// vSphere does (HTTP 500, soapenv:Fault, detail element "<Type>Fault" with xsi:type),
// and task responses.

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	vimxml "github.com/vmware/govmomi/vim25/xml"
)

// The operation's element, whatever namespace prefix the client gave it.
var bodyIs = regexp.MustCompile(`<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)[\s>/]`)

func op(body []byte) string {
	if m := bodyIs.FindSubmatch(body); m != nil {
		return string(m[1])
	}
	return ""
}

var vimTypes = types.TypeFunc()

// typeFunc: the vim25 types, also when the decoder hands us "ns1:TraversalSpec"
// (the same fallback as vcsim's own decoder).
func typeFunc(name string) (reflect.Type, bool) {
	if t, ok := vimTypes(name); ok {
		return t, ok
	}
	if i := strings.Index(name, ":"); i >= 0 {
		return vimTypes(name[i+1:])
	}
	return nil, false
}

// decode: the request body as govmomi's request type (e.g. *types.ReconfigVM_Task).
func decode(body []byte) (interface{}, error) {
	m, err := simulator.UnmarshalBody(typeFunc, body)
	if err != nil {
		return nil, err
	}
	return m.Body, nil
}

const envelopeStart = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
const envelopeEnd = `</soapenv:Body></soapenv:Envelope>`

func soapFault(w http.ResponseWriter, faultType, msg, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>%s`,
		envelopeStart, xmlEscape(msg), faultType, faultType, inner, faultType, envelopeEnd)
}

// invalidArgument: vSphere's InvalidArgument fault naming the offending parameter.
func invalidArgument(w http.ResponseWriter, property, msg string) {
	soapFault(w, "InvalidArgument", msg, "<invalidProperty>"+xmlEscape(property)+"</invalidProperty>")
}

func fileFault(w http.ResponseWriter, file, msg string) {
	soapFault(w, "FileFault", msg, "<file>"+xmlEscape(file)+"</file>")
}

func soapResponse(w http.ResponseWriter, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write([]byte(envelopeStart + inner + envelopeEnd))
}

// failedTask answers a *_Task call the way vSphere reports a refused operation: the
// call returns a Task, whose info.error carries the fault.
func failedTask(w http.ResponseWriter, method string, obj types.ManagedObjectReference, fault types.BaseMethodFault, msg string) {
	task := simulator.CreateTask(obj, lcFirst(strings.TrimSuffix(method, "_Task")), func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.Update(task, []types.PropertyChange{{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}}})
	soapResponse(w, fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse>`, method, ref.Value, method))
}

func lcFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// setBody replaces the request's SOAP body (the session cookie stays in the HTTP header).
func setBody(r *http.Request, body interface{}) error {
	b, err := vimxml.Marshal(soap.Envelope{Body: body})
	if err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	r.Header.Set("Content-Length", fmt.Sprint(len(b)))
	return nil
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// record runs the simulator's handler into a recorder, so we can act after it and
// before the client sees the answer.
func record(next http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	return rec
}

func replay(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
