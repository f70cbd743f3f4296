package main

// Self-check: the launcher's files read the same through qemu-img (an independent VMDK
// reader, qemu block/vmdk.c) as through our own chain code, at every step of a snapshot
// life cycle driven over the SDK with govmomi, and the guest sees what it wrote.
// Run: GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/hamal-gocache go test .

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

type fixture struct {
	t      *testing.T
	ctx    context.Context
	base   string // http://host:port
	vm     *object.VirtualMachine
	sim    *simulator.VirtualMachine
	key    int32
	model  []byte            // what the guest should see now
	states map[string][]byte // snapshot name -> guest content when taken
	snaps  map[string]types.ManagedObjectReference
}

func setup(t *testing.T) (*fixture, func()) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	cbtDir := t.TempDir()
	model := simulator.VPX()
	model.Machine = 1
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	p := newPeer(4, cbtDir) // 4 MiB disks: small, still several grain tables
	if err := p.layOut(); err != nil {
		t.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("hamal", "pw")}
	server := model.Service.NewServer()
	server.Config.Handler = p.wrap(server.Config.Handler)
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, server.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.Map.Any("VirtualMachine").(*simulator.VirtualMachine)
	f := &fixture{t: t, ctx: ctx, base: "http://" + server.URL.Host, sim: sim,
		vm: object.NewVirtualMachine(c.Client, sim.Self), states: map[string][]byte{},
		snaps: map[string]types.ManagedObjectReference{}}
	d := flatDisks(sim.Config.Hardware.Device)[0]
	f.key = d.Key
	f.model = make([]byte, d.CapacityInBytes)
	return f, func() { server.Close(); model.Remove() }
}

func (f *fixture) post(path string, body []byte) *http.Response {
	res, err := http.Post(f.base+path, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func (f *fixture) write(off int64, data []byte) {
	res := f.post(fmt.Sprintf("/hamal/guest-write?vm=%s&disk=%d&offset=%d", f.sim.Self.Value, f.key, off), data)
	msg, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		f.t.Fatalf("guest-write: %d %s", res.StatusCode, msg)
	}
	copy(f.model[off:], data)
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
		if b[i] == 0 {
			b[i] = 1
		}
	}
	return b
}

func (f *fixture) snapshot(name string) {
	task, err := f.vm.CreateSnapshot(f.ctx, name, "", false, false)
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := task.WaitForResult(f.ctx, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.snaps[name] = info.Result.(types.ManagedObjectReference)
	f.states[name] = append([]byte(nil), f.model...)
}

func (f *fixture) remove(name string) {
	task, err := f.vm.RemoveSnapshot(f.ctx, f.snaps[name].Value, false, types.NewBool(true))
	if err != nil {
		f.t.Fatal(err)
	}
	if err := task.Wait(f.ctx); err != nil {
		f.t.Fatal(err)
	}
	delete(f.snaps, name)
	delete(f.states, name)
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// qemuRead: the raw image qemu-img makes of a descriptor (and its parents).
func qemuRead(t *testing.T, desc string) []byte {
	out := filepath.Join(t.TempDir(), "raw")
	if msg, err := exec.Command("qemu-img", "convert", "-f", "vmdk", "-O", "raw", desc, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v %s", desc, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ownRead(t *testing.T, desc string) []byte {
	c, err := openChain(desc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	b := make([]byte, c.capacity)
	if _, err := c.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// verify: every descriptor of the running chain reads the same with qemu-img and with
// us; the running disk shows the model; each snapshot's config shows its frozen state.
func (f *fixture) verify(step string) {
	t := f.t
	d := findDisk(f.sim.Config.Hardware.Device, f.key)
	for b := backingOf(d); b != nil; b = b.Parent {
		local, err := localPath(b.FileName)
		if err != nil {
			t.Fatal(err)
		}
		if q, o := sum(qemuRead(t, local)), sum(ownRead(t, local)); q != o {
			t.Fatalf("%s: %s: qemu-img %s, ours %s", step, b.FileName, q, o)
		}
	}
	res, err := http.Get(fmt.Sprintf("%s/hamal/guest-read?vm=%s&disk=%d", f.base, f.sim.Self.Value, f.key))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	if sum(got) != sum(f.model) {
		t.Fatalf("%s: guest-read differs from what the guest wrote", step)
	}
	for name, ref := range f.snaps {
		s, _ := getSnapshot(ref.Value)
		sd := findDisk(s.Config.Hardware.Device, f.key)
		local, _ := localPath(backingOf(sd).FileName)
		if sum(qemuRead(t, local)) != sum(f.states[name]) {
			t.Fatalf("%s: snapshot %s (%s) no longer shows its frozen content", step, name, backingOf(sd).FileName)
		}
		if backingOf(sd).ChangeId == "" {
			t.Fatalf("%s: snapshot %s has no changeId", step, name)
		}
	}
}

func (f *fixture) vmDir() []string {
	local, _ := localPath(backingOf(findDisk(f.sim.Config.Hardware.Device, f.key)).FileName)
	entries, _ := os.ReadDir(filepath.Dir(local))
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "disk1") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func (f *fixture) changed(snap, changeID string) (*types.DiskChangeInfo, error) {
	res, err := methods.QueryChangedDiskAreas(f.ctx, f.vm.Client(), &types.QueryChangedDiskAreas{
		This: f.sim.Self, Snapshot: &types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: f.snaps[snap].Value},
		DeviceKey: f.key, StartOffset: 0, ChangeId: changeID})
	if err != nil {
		return nil, err
	}
	return &res.Returnval, nil
}

func (f *fixture) changeID(snap string) string {
	s, _ := getSnapshot(f.snaps[snap].Value)
	return backingOf(findDisk(s.Config.Hardware.Device, f.key)).ChangeId
}

func TestSelfCheck(t *testing.T) {
	f, done := setup(t)
	defer done()
	f.write(12345, pattern(1, 1000))    // unaligned, inside one grain table
	f.write(1<<20+3, pattern(2, 70000)) // unaligned, across 64 KiB units
	f.verify("flat")
	f.snapshot("s1")
	f.write(12000, pattern(3, 600))     // partial grains over data below
	f.write(3<<20-100, pattern(4, 200)) // across a grain table boundary
	f.verify("after s1")
	f.snapshot("s2")
	f.write(1<<20, pattern(5, 512))
	f.snapshot("s3")
	f.write(12345, pattern(6, 10))
	f.verify("three snapshots")
	if got := f.vmDir(); len(got) != 8 {
		t.Fatalf("expected base + 3 deltas, got %v", got)
	}

	// CBT: s2 against s1 covers exactly the units written in between.
	ci, err := f.changed("s2", f.changeID("s1"))
	if err != nil {
		t.Fatal(err)
	}
	want := []types.DiskChangeExtent{{Start: 0, Length: unit}, {Start: 3<<20 - unit, Length: 2 * unit}}
	if fmt.Sprint(ci.ChangedArea) != fmt.Sprint(want) || ci.Length != 4<<20 {
		t.Fatalf("changed areas s1->s2: %+v", ci)
	}
	if ci, err = f.changed("s1", "*"); err != nil || len(ci.ChangedArea) != 2 {
		t.Fatalf("allocated areas of s1: %+v %v", ci, err)
	}
	f.post("/hamal/cbt-fault?vm="+f.sim.Self.Value+"&fault=FileFault", nil)
	if _, err := f.changed("s2", f.changeID("s1")); err == nil || !strings.Contains(err.Error(), "ctk") {
		t.Fatalf("injected FileFault: %v", err)
	}

	// A disk with snapshots cannot grow.
	if err := f.grow(8 << 20); err == nil {
		t.Fatal("growing a disk with snapshots succeeded")
	}

	f.remove("s2") // the middle one
	f.verify("s2 removed")
	if got := f.vmDir(); len(got) != 6 {
		t.Fatalf("expected base + 2 deltas, got %v", got)
	}
	f.remove("s3") // the newest
	f.verify("s3 removed")
	f.snapshot("s4")
	f.write(2<<20, pattern(7, 4096))
	f.remove("s1") // the oldest
	f.verify("s1 removed")

	f.post("/hamal/reset-cbt?vm="+f.sim.Self.Value, nil)
	f.snapshot("s5")
	if _, err := f.changed("s5", f.changeID("s4")); err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("changeId from before the reset: %v", err)
	}

	task, err := f.vm.RemoveAllSnapshot(f.ctx, types.NewBool(true))
	if err != nil || task.Wait(f.ctx) != nil {
		t.Fatal("RemoveAllSnapshots failed")
	}
	f.snaps, f.states = map[string]types.ManagedObjectReference{}, map[string][]byte{}
	f.verify("all removed")
	if got := f.vmDir(); fmt.Sprint(got) != "[disk1-flat.vmdk disk1.vmdk]" {
		t.Fatalf("after RemoveAll the directory holds %v", got)
	}

	if err := f.grow(8 << 20); err != nil {
		t.Fatal(err)
	}
	f.model = append(f.model, make([]byte, 4<<20)...)
	f.verify("grown")

	res := f.post("/hamal/fail-next?status=503&count=1", nil)
	res.Body.Close()
	if _, err := f.vm.PowerState(f.ctx); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("fail-next: %v", err)
	}
}

func (f *fixture) grow(capacity int64) error {
	d := *findDisk(f.sim.Config.Hardware.Device, f.key)
	d.CapacityInKB = capacity / 1024
	d.CapacityInBytes = capacity
	task, err := f.vm.Reconfigure(f.ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: &d}}})
	if err != nil {
		return err
	}
	return task.Wait(f.ctx)
}

// A disk added by ReconfigVM (fileOperation create) gets the ESXi layout; a diskMode edit
// keeps the files and the chain.
func TestReconfigDisks(t *testing.T) {
	f, done := setup(t)
	defer done()
	devices, err := f.vm.Device(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	scsi, err := devices.FindSCSIController("")
	if err != nil {
		t.Fatal(err)
	}
	disk := devices.CreateDisk(scsi, types.ManagedObjectReference{}, "")
	disk.CapacityInKB = 2048
	if err := f.vm.AddDevice(f.ctx, disk); err != nil {
		t.Fatal(err)
	}
	var added *types.VirtualDisk
	for _, d := range flatDisks(f.sim.Config.Hardware.Device) {
		if d.Key != f.key {
			added = d
		}
	}
	if added == nil || added.CapacityInBytes != 2<<20 {
		t.Fatalf("added disk: %+v", added)
	}
	local, _ := localPath(backingOf(added).FileName)
	if out, err := exec.Command("qemu-img", "info", local).CombinedOutput(); err != nil || !strings.Contains(string(out), "2 MiB") {
		t.Fatalf("qemu-img info %s: %v %s", local, err, out)
	}

	f.write(5000, pattern(9, 3000))
	f.snapshot("s1")
	d := *findDisk(f.sim.Config.Hardware.Device, f.key)
	nb := *backingOf(&d)
	nb.DiskMode = string(types.VirtualDiskModeIndependent_persistent)
	d.Backing = &nb
	if err := f.vm.EditDevice(f.ctx, &d); err != nil {
		t.Fatal(err)
	}
	b := backingOf(findDisk(f.sim.Config.Hardware.Device, f.key))
	if b.DiskMode != nb.DiskMode || b.Parent == nil || !strings.HasSuffix(b.FileName, "-000001.vmdk") {
		t.Fatalf("after the diskMode edit: %+v", b)
	}
	f.verify("diskMode edited")
}
