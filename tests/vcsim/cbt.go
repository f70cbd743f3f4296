package main

// Changed Block Tracking emulation, because this vcsim (govmomi 0.24.2) has none: it
// answers QueryChangedDiskAreas with 404s of its own making. TESTS ONLY, NOT VMWARE'S
// BEHAVIOUR IN DETAIL:
//   - each snapshot freezes a copy of every disk file (<file>.hamal-<n>), publishes that
//     copy as the snapshot's backing file (so /folder and nbdkit read the frozen data) and
//     gives it a changeId "<epoch uuid>/<n>";
//   - QueryChangedDiskAreas compares the frozen copies in 64 KiB units ("*": the allocated
//     areas, from SEEK_DATA/SEEK_HOLE), answering at most 8 MiB of the disk per call so
//     clients must page; an unknown changeId is a fault (a CBT reset);
//   - POST /hamal/reset-cbt?vm=vm-42 starts a new epoch for that VM (a CBT reset).

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const unit = 64 * 1024
const window = 8 * 1024 * 1024

type cbt struct {
	mu     sync.Mutex
	seq    int
	epoch  map[string]string // vm -> uuid part of its changeIds
	frozen map[string]string // changeId -> frozen file
}

func newCBT() *cbt {
	return &cbt{epoch: map[string]string{}, frozen: map[string]string{}}
}

type ref struct {
	Type  string `xml:"type,attr"`
	Value string `xml:",chardata"`
}

type qcda struct {
	This        ref    `xml:"Body>QueryChangedDiskAreas>_this"`
	Snapshot    ref    `xml:"Body>QueryChangedDiskAreas>snapshot"`
	DeviceKey   int32  `xml:"Body>QueryChangedDiskAreas>deviceKey"`
	StartOffset int64  `xml:"Body>QueryChangedDiskAreas>startOffset"`
	ChangeID    string `xml:"Body>QueryChangedDiskAreas>changeId"`
}

type createSnap struct {
	This ref `xml:"Body>CreateSnapshot_Task>_this"`
}

// The operation's element, whatever namespace prefix the client gave it.
var bodyIs = regexp.MustCompile(`<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)[\s>/]`)

func (c *cbt) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hamal/reset-cbt" {
			c.mu.Lock()
			c.epoch[r.URL.Query().Get("vm")] = fmt.Sprintf("52 %d", time.Now().UnixNano())
			c.mu.Unlock()
			return
		}
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		switch {
		case op(body) == "QueryChangedDiskAreas":
			var q qcda
			if err := xml.Unmarshal(body, &q); err != nil {
				fault(w, "bad request: "+err.Error())
				return
			}
			c.query(w, q)
		case op(body) == "CreateSnapshot_Task":
			var q createSnap
			_ = xml.Unmarshal(body, &q)
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			c.freeze(q.This.Value)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func datastoreFile(name string) (string, string) {
	// "[LocalDS_0] dir/file.vmdk" -> local path, datastore name
	end := strings.Index(name, "]")
	dsName := name[1:end]
	rel := strings.TrimSpace(name[end+1:])
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == dsName {
			return path.Join(ds.Info.GetDatastoreInfo().Url, rel), dsName
		}
	}
	return "", dsName
}

func (c *cbt) freeze(vmID string) {
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: vmID}).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var snap *simulator.VirtualMachineSnapshot
	for i := 0; i < 100 && snap == nil; i++ {
		simulator.Map.WithLock(vm, func() {
			if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
				s := simulator.Map.Get(*vm.Snapshot.CurrentSnapshot).(*simulator.VirtualMachineSnapshot)
				if !strings.Contains(fmt.Sprint(s.Config.Hardware.Device), ".hamal-") {
					snap = s
				}
			}
		})
		if snap == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if snap == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch[vmID] == "" {
		c.epoch[vmID] = fmt.Sprintf("52 %d", time.Now().UnixNano())
	}
	simulator.Map.WithLock(snap, func() {
		devices := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
		copy(devices, snap.Config.Hardware.Device)
		for i, d := range devices {
			disk, ok := d.(*types.VirtualDisk)
			if !ok {
				continue
			}
			backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if !ok {
				continue
			}
			src, _ := datastoreFile(backing.FileName)
			c.seq++
			frozen := fmt.Sprintf("%s.hamal-%d", src, c.seq)
			if err := copyFile(src, frozen); err != nil {
				continue
			}
			nd := *disk
			nb := *backing
			nb.FileName = fmt.Sprintf("%s.hamal-%d", backing.FileName, c.seq)
			nb.ChangeId = fmt.Sprintf("%s/%d", c.epoch[vmID], c.seq)
			if st, err := os.Stat(src); err == nil {
				nd.CapacityInBytes = st.Size()
				nd.CapacityInKB = st.Size() / 1024
			}
			nd.Backing = &nb
			devices[i] = &nd
			c.frozen[nb.ChangeId] = frozen
		}
		snap.Config.Hardware.Device = devices
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	st, _ := in.Stat()
	// Copy only data areas so sparse disks stay sparse.
	for _, a := range allocated(in, 0, st.Size()) {
		buf := make([]byte, a[1])
		if _, err := in.ReadAt(buf, a[0]); err != nil && err != io.EOF {
			return err
		}
		if _, err := out.WriteAt(buf, a[0]); err != nil {
			return err
		}
	}
	return out.Truncate(st.Size())
}

func (c *cbt) query(w http.ResponseWriter, q qcda) {
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: q.Snapshot.Value}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		fault(w, "snapshot "+q.Snapshot.Value+" not found")
		return
	}
	var cur string
	var size int64
	for _, d := range snap.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == q.DeviceKey {
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				c.mu.Lock()
				cur = c.frozen[b.ChangeId]
				c.mu.Unlock()
				size = disk.CapacityInBytes
			}
		}
	}
	if cur == "" {
		fault(w, fmt.Sprintf("disk %d of snapshot %s has no change tracking", q.DeviceKey, q.Snapshot.Value))
		return
	}
	end := q.StartOffset + window
	if end > size {
		end = size
	}
	var areas [][2]int64
	if q.ChangeID == "*" {
		f, err := os.Open(cur)
		if err != nil {
			fault(w, err.Error())
			return
		}
		areas = allocated(f, q.StartOffset, end)
		f.Close()
	} else {
		c.mu.Lock()
		old := c.frozen[q.ChangeID]
		epochOK := strings.HasPrefix(q.ChangeID, c.epoch[q.This.Value]+"/")
		c.mu.Unlock()
		if old == "" || !epochOK {
			fault(w, "changeId "+q.ChangeID+" is not valid (change tracking was reset)")
			return
		}
		areas = differing(old, cur, q.StartOffset, end)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>`, q.StartOffset, end-q.StartOffset)
	for _, a := range areas {
		fmt.Fprintf(&b, "<changedArea><start>%d</start><length>%d</length></changedArea>", a[0], a[1])
	}
	b.WriteString("</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>")
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}

func fault(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, xmlEscape(msg))
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// allocated: data areas of f in [start, end), by SEEK_DATA/SEEK_HOLE, in 64 KiB units.
func allocated(f *os.File, start, end int64) [][2]int64 {
	var out [][2]int64
	for off := start; off < end; {
		data, err := f.Seek(off, 3) // SEEK_DATA
		if err != nil || data >= end {
			break
		}
		hole, err := f.Seek(data, 4) // SEEK_HOLE
		if err != nil || hole > end {
			hole = end
		}
		a := data / unit * unit
		b := (hole + unit - 1) / unit * unit
		if b > end {
			b = end
		}
		if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] >= a {
			out[n-1][1] = b - out[n-1][0]
		} else {
			out = append(out, [2]int64{a, b - a})
		}
		off = hole
	}
	return out
}

// differing: 64 KiB units of [start, end) whose bytes differ between two files.
func differing(oldPath, curPath string, start, end int64) [][2]int64 {
	var out [][2]int64
	a, err1 := os.Open(oldPath)
	b, err2 := os.Open(curPath)
	if err1 != nil || err2 != nil {
		return [][2]int64{{start, end - start}}
	}
	defer a.Close()
	defer b.Close()
	x := make([]byte, unit)
	y := make([]byte, unit)
	for off := start; off < end; off += unit {
		n := int64(unit)
		if off+n > end {
			n = end - off
		}
		na, _ := a.ReadAt(x[:n], off)
		nb, _ := b.ReadAt(y[:n], off)
		for i := na; i < int(n); i++ {
			x[i] = 0
		}
		for i := nb; i < int(n); i++ {
			y[i] = 0
		}
		if !bytes.Equal(x[:n], y[:n]) {
			if k := len(out); k > 0 && out[k-1][0]+out[k-1][1] == off {
				out[k-1][1] += n
			} else {
				out = append(out, [2]int64{off, n})
			}
		}
	}
	return out
}

func op(body []byte) string {
	if m := bodyIs.FindSubmatch(body); m != nil {
		return string(m[1])
	}
	return ""
}
