package main

// Test-control endpoints under /hamal/ (plain HTTP on the SDK's server, no SOAP). Errors
// are 4xx with a plain-text reason.
//   POST /hamal/reset-cbt?vm=        new CBT epoch: older changeIds become invalid
//   POST /hamal/cbt-fault?vm=&fault= FileFault|InvalidArgument for the VM's next
//                                    QueryChangedDiskAreas with a changeId other than "*"
//   POST /hamal/guest-write?vm=&disk=<deviceKey>&offset=  body (<= 8 MiB) written as the
//                                    guest would: the flat extent without snapshots, else
//                                    the newest delta (chain.go)
//   GET  /hamal/guest-read?vm=&disk= the guest-visible disk, capacity bytes
//   POST /hamal/datastore-type?name=&type=  DatastoreSummary.type (VMFS, NFS, NFS41, vsan, VVOL)
//   POST /hamal/fail-next?status=&count=    the next count /sdk requests answer that HTTP
//                                    status with an HTML body, as a reverse proxy in front
//                                    of vCenter does when the service is down

import (
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const maxGuestWrite = 8 << 20

func (p *peer) control(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	wantMethod := http.MethodPost
	if r.URL.Path == "/hamal/guest-read" {
		wantMethod = http.MethodGet
	}
	if r.Method != wantMethod {
		http.Error(w, r.URL.Path+" wants "+wantMethod, http.StatusMethodNotAllowed)
		return
	}
	var err error
	switch r.URL.Path {
	case "/hamal/reset-cbt":
		err = p.resetCBT(q.Get("vm"))
	case "/hamal/cbt-fault":
		err = p.setCBTFault(q.Get("vm"), q.Get("fault"))
	case "/hamal/guest-write":
		err = p.guestWrite(r)
	case "/hamal/guest-read":
		err = p.guestRead(w, q.Get("vm"), q.Get("disk"))
	case "/hamal/datastore-type":
		err = setDatastoreType(q.Get("name"), q.Get("type"))
	case "/hamal/fail-next":
		err = p.setFailNext(q.Get("status"), q.Get("count"))
	default:
		http.Error(w, "no such endpoint: "+r.URL.Path, http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
	}
}

func (p *peer) resetCBT(vm string) error {
	if _, err := getVM(vm); err != nil {
		return err
	}
	p.mu.Lock()
	p.cbt.reset(vm)
	p.mu.Unlock()
	return nil
}

func (p *peer) setCBTFault(vm, fault string) error {
	if _, err := getVM(vm); err != nil {
		return err
	}
	if fault != "FileFault" && fault != "InvalidArgument" {
		return fmt.Errorf("fault must be FileFault or InvalidArgument, not %q", fault)
	}
	p.mu.Lock()
	p.cbtFault[vm] = fault
	p.mu.Unlock()
	return nil
}

// runningDisk: the VM's disk by device key, as it runs now.
func runningDisk(vm, disk string) (*types.VirtualDisk, error) {
	v, err := getVM(vm)
	if err != nil {
		return nil, err
	}
	key, err := strconv.Atoi(disk)
	if err != nil {
		return nil, fmt.Errorf("disk must be a device key, not %q", disk)
	}
	d := findDisk(v.Config.Hardware.Device, int32(key))
	if d == nil {
		return nil, fmt.Errorf("%s has no disk %d", vm, key)
	}
	return d, nil
}

func (p *peer) guestWrite(r *http.Request) error {
	q := r.URL.Query()
	offset, err := strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		return fmt.Errorf("offset must be a byte offset, not %q", q.Get("offset"))
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxGuestWrite+1))
	if err != nil {
		return err
	}
	if len(data) > maxGuestWrite {
		return fmt.Errorf("body is over 8 MiB")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := runningDisk(q.Get("vm"), q.Get("disk"))
	if err != nil {
		return err
	}
	return writeGuest(backingOf(d), offset, data)
}

// writeGuest: what the guest's write does to the running disk's files.
func writeGuest(b *types.VirtualDiskFlatVer2BackingInfo, offset int64, data []byte) error {
	c, err := openDisk(b)
	if err != nil {
		return err
	}
	defer c.close()
	if offset+int64(len(data)) > c.capacity {
		return fmt.Errorf("write of %d bytes at %d is beyond the disk's %d bytes", len(data), offset, c.capacity)
	}
	_, err = c.WriteAt(data, offset)
	return err
}

func (p *peer) guestRead(w http.ResponseWriter, vm, disk string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, err := runningDisk(vm, disk)
	if err != nil {
		return err
	}
	c, err := openDisk(backingOf(d))
	if err != nil {
		return err
	}
	defer c.close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(c.capacity, 10))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < c.capacity; off += int64(len(buf)) {
		n := min64(int64(len(buf)), c.capacity-off)
		if _, err := c.ReadAt(buf[:n], off); err != nil {
			return nil // headers are gone; the short body tells the client
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return nil
		}
	}
	return nil
}

var datastoreTypes = map[string]bool{"VMFS": true, "NFS": true, "NFS41": true, "CIFS": true, "vsan": true, "VVOL": true, "VFFS": true, "PMEM": true}

func setDatastoreType(name, typ string) error {
	ds := datastoreByName(name)
	if ds == nil {
		return fmt.Errorf("no datastore %q", name)
	}
	if !datastoreTypes[typ] {
		return fmt.Errorf("type %q is not a DatastoreSummary.type", typ)
	}
	simulator.Map.WithLock(ds, func() {
		simulator.Map.Update(ds, []types.PropertyChange{{Name: "summary.type", Val: typ}})
	})
	return nil
}

func (p *peer) setFailNext(status, count string) error {
	s, err := strconv.Atoi(status)
	if err != nil || s < 400 || s > 599 {
		return fmt.Errorf("status must be an HTTP error status, not %q", status)
	}
	n := 1
	if count != "" {
		if n, err = strconv.Atoi(count); err != nil || n < 0 {
			return fmt.Errorf("count must be a number, not %q", count)
		}
	}
	p.failMu.Lock()
	p.fail.status, p.fail.count = s, n
	p.failMu.Unlock()
	return nil
}

// failing answers an /sdk request with the injected status, if one is pending.
func (p *peer) failing(w http.ResponseWriter) bool {
	p.failMu.Lock()
	status := p.fail.status
	if p.fail.count <= 0 {
		p.failMu.Unlock()
		return false
	}
	p.fail.count--
	p.failMu.Unlock()
	text := fmt.Sprintf("%d %s", status, http.StatusText(status))
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<html><body><h1>%s</h1>\nThe server is temporarily unable to service your request.\n</body></html>\n", text)
	return true
}
