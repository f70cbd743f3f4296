package main

// Changed Block Tracking, which vcsim 0.24.2 lacks (it has no QueryChangedDiskAreas).
// vSphere API: VirtualMachine.QueryChangedDiskAreas(snapshot, deviceKey, startOffset,
// changeId) -> DiskChangeInfo{startOffset, length, changedArea[]}; changeId "*" asks for
// the allocated areas; a changeId from before a CBT reset, or unknown, is refused with
// InvalidArgument (invalidProperty changeId); the disk's changeId is reported in the
// snapshot config's VirtualDiskFlatVer2BackingInfo.changeId.
// Model (TESTS ONLY, not ESXi's ctk file): at each CreateSnapshot, the guest-visible
// content of each disk (the flattened chain) is copied into a private temp directory
// outside every datastore, sparsely (only non-zero 64 KiB units are written) and keyed by
// a changeId "<epoch>/<n>"; the epoch ("52 <nanos>") changes on /hamal/reset-cbt.
// Answers cover at most 8 MiB of the disk from startOffset per call, so clients must page;
// areas are whole 64 KiB units. "*" = the non-zero units of the snapshot's copy; otherwise
// the units whose bytes differ between the two copies. Copies are kept until exit.
// Not modelled: areas allocated but zero count as unallocated; ESXi reports writes even
// when they rewrite identical bytes, we report only differing content.

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

const unit = 64 * 1024
const window = 8 * 1024 * 1024

type frozenCopy struct {
	path  string
	size  int64
	units []bool // non-zero 64 KiB units
}

type cbtStore struct {
	dir    string
	seq    int
	epoch  map[string]string // vm -> epoch part of its changeIds
	copies map[string]*frozenCopy
}

func newCBTStore(dir string) *cbtStore {
	return &cbtStore{dir: dir, epoch: map[string]string{}, copies: map[string]*frozenCopy{}}
}

func (s *cbtStore) reset(vm string) {
	s.epoch[vm] = fmt.Sprintf("52 %d", time.Now().UnixNano())
}

func (s *cbtStore) epochOf(vm string) string {
	if s.epoch[vm] == "" {
		s.reset(vm)
	}
	return s.epoch[vm]
}

// freeze copies the disk's current guest-visible content; returns its changeId.
func (s *cbtStore) freeze(vm string, b *types.VirtualDiskFlatVer2BackingInfo) (string, error) {
	c, err := openDisk(b)
	if err != nil {
		return "", err
	}
	defer c.close()
	s.seq++
	fc := &frozenCopy{path: filepath.Join(s.dir, fmt.Sprintf("copy-%d", s.seq)), size: c.capacity}
	f, err := os.Create(fc.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, unit)
	for off := int64(0); off < c.capacity; off += unit {
		n := min64(unit, c.capacity-off)
		if _, err := c.ReadAt(buf[:n], off); err != nil {
			return "", err
		}
		nz := !allZero(buf[:n])
		fc.units = append(fc.units, nz)
		if nz {
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return "", err
			}
		}
	}
	if err := f.Truncate(c.capacity); err != nil {
		return "", err
	}
	id := fmt.Sprintf("%s/%d", s.epochOf(vm), s.seq)
	s.copies[id] = fc
	return id, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
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

func (p *peer) queryChangedDiskAreas(w http.ResponseWriter, body []byte) {
	var q qcda
	if err := xml.Unmarshal(body, &q); err != nil {
		invalidArgument(w, "snapshot", "bad request: "+err.Error())
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	snap, ok := getSnapshot(q.Snapshot.Value)
	if !ok || snap.Vm.Value != q.This.Value {
		invalidArgument(w, "snapshot", "snapshot "+q.Snapshot.Value+" not found on "+q.This.Value)
		return
	}
	disk := findDisk(snap.Config.Hardware.Device, q.DeviceKey)
	if disk == nil {
		invalidArgument(w, "deviceKey", fmt.Sprintf("no disk %d in snapshot %s", q.DeviceKey, q.Snapshot.Value))
		return
	}
	b := backingOf(disk)
	cur := p.cbt.copies[b.ChangeId]
	if cur == nil {
		fileFault(w, ctkName(b.FileName), "change tracking is not active for this disk")
		return
	}
	if q.StartOffset < 0 || q.StartOffset >= cur.size {
		invalidArgument(w, "startOffset", fmt.Sprintf("startOffset %d is outside the disk", q.StartOffset))
		return
	}
	end := min64(q.StartOffset+window, cur.size)
	var areas [][2]int64
	if q.ChangeID == "*" {
		areas = unitsWhere(q.StartOffset, end, func(u int) bool { return cur.units[u] })
	} else {
		if p.injectedFault(w, q.This.Value, ctkName(b.FileName)) {
			return
		}
		old := p.cbt.copies[q.ChangeID]
		if old == nil || !strings.HasPrefix(q.ChangeID, p.cbt.epochOf(q.This.Value)+"/") {
			invalidArgument(w, "changeId", "changeId "+q.ChangeID+" is not valid (change tracking was reset)")
			return
		}
		areas = unitsWhere(q.StartOffset, end, func(u int) bool { return differs(old, cur, u) })
	}
	var x strings.Builder
	fmt.Fprintf(&x, `<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>`, q.StartOffset, end-q.StartOffset)
	for _, a := range areas {
		fmt.Fprintf(&x, "<changedArea><start>%d</start><length>%d</length></changedArea>", a[0], a[1])
	}
	x.WriteString("</returnval></QueryChangedDiskAreasResponse>")
	soapResponse(w, x.String())
}

// ctkName: the change-tracking file ESXi keeps beside a disk (x-ctk.vmdk), named in faults.
func ctkName(fileName string) string {
	return strings.TrimSuffix(fileName, ".vmdk") + "-ctk.vmdk"
}

// unitsWhere: the 64 KiB units of [start, end) where pick holds, merged into areas.
func unitsWhere(start, end int64, pick func(int) bool) [][2]int64 {
	var out [][2]int64
	for off := start / unit * unit; off < end; off += unit {
		if !pick(int(off / unit)) {
			continue
		}
		a, b := off, min64(off+unit, end)
		if a < start {
			a = start
		}
		if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] == a {
			out[n-1][1] += b - a
		} else {
			out = append(out, [2]int64{a, b - a})
		}
	}
	return out
}

// differs: whether unit u holds different bytes in the two copies (a disk grown since
// the old copy reads as zeros beyond it).
func differs(old, cur *frozenCopy, u int) bool {
	oldNZ := u < len(old.units) && old.units[u]
	if !oldNZ && !cur.units[u] {
		return false
	}
	if oldNZ != cur.units[u] {
		return true
	}
	return !bytes.Equal(readUnit(old, u), readUnit(cur, u))
}

func readUnit(c *frozenCopy, u int) []byte {
	buf := make([]byte, unit)
	f, err := os.Open(c.path)
	if err != nil {
		return nil
	}
	defer f.Close()
	n, _ := f.ReadAt(buf, int64(u)*unit)
	return buf[:n]
}

// injectedFault answers the fault set by /hamal/cbt-fault for this VM, once.
func (p *peer) injectedFault(w http.ResponseWriter, vm, ctk string) bool {
	switch p.cbtFault[vm] {
	case "FileFault":
		fileFault(w, ctk, "Error caused by file "+ctk)
	case "InvalidArgument":
		invalidArgument(w, "changeId", "A specified parameter was not correct: changeId")
	default:
		return false
	}
	delete(p.cbtFault, vm)
	return true
}
