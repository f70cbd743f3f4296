package main

// Snapshots as ESXi takes and removes them (vSphere API: CreateSnapshot_Task,
// RemoveSnapshot_Task, RemoveAllSnapshots_Task; VirtualMachineSnapshot.config keeps the
// disk backing as it was when the snapshot was taken). vcsim does the object and tree
// work; we then fix the disks up:
//   - create: the snapshot's config keeps the pre-snapshot backing (with a changeId, see
//     cbt.go); the running disk becomes a new vmfsSparse delta x-00000N.vmdk whose parent
//     is the previous backing, so chains grow x.vmdk <- x-000001.vmdk <- x-000002.vmdk;
//   - remove S: the delta D made when S was taken (the child of S's backing P) is merged
//     into P, every reference to D then names P, and D's files are deleted; newest, oldest
//     and middle snapshots alike (RemoveSnapshot with consolidate=true);
//   - remove all: every delta is folded into the base flat extent.
// Not modelled: reverting (RevertToSnapshot leaves the disks alone), snapshot trees with
// branches, consolidate=false (we always consolidate), memory/quiesce files.

import (
	"fmt"
	"log"
	"net/http"
	"path/filepath"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (p *peer) createSnapshot(w http.ResponseWriter, r *http.Request, next http.Handler, body []byte) {
	req, err := decode(body)
	cs, ok := req.(*types.CreateSnapshot_Task)
	if err != nil || !ok {
		next.ServeHTTP(w, r)
		return
	}
	vm, err := getVM(cs.This.Value)
	if err != nil {
		next.ServeHTTP(w, r)
		return
	}
	before := map[string]bool{}
	for _, s := range snapshotsOf(vm) {
		before[s.Self.Value] = true
	}
	rec := record(next, r)
	if snap := waitNewSnapshot(vm, before); snap != nil {
		p.mu.Lock()
		if err := p.takeDeltas(vm, snap); err != nil {
			log.Printf("snapshot %s of %s: %v", snap.Self.Value, vm.Self.Value, err)
		}
		p.mu.Unlock()
	}
	replay(w, rec)
}

// waitNewSnapshot: vcsim 0.24.2 runs the task before answering, but wait a little in
// case a later vcsim runs it in the background.
func waitNewSnapshot(vm *simulator.VirtualMachine, before map[string]bool) *simulator.VirtualMachineSnapshot {
	for i := 0; i < 200; i++ {
		for _, s := range snapshotsOf(vm) {
			if !before[s.Self.Value] {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func (p *peer) takeDeltas(vm *simulator.VirtualMachine, snap *simulator.VirtualMachineSnapshot) error {
	devices := vm.Config.Hardware.Device
	snapDevices := snap.Config.Hardware.Device
	for _, disk := range flatDisks(devices) {
		b := backingOf(disk)
		changeID, err := p.cbt.freeze(vm.Self.Value, b)
		if err != nil {
			return err
		}
		frozen, err := buildBacking(b.FileName, changeID, b)
		if err != nil {
			return err
		}
		snapDevices = withDisk(snapDevices, withBacking(disk, frozen))
		parent, err := localPath(b.FileName)
		if err != nil {
			return err
		}
		delta, err := makeDelta(parent)
		if err != nil {
			return err
		}
		running, err := buildBacking(sibling(b.FileName, filepath.Base(delta)), changeID, b)
		if err != nil {
			return err
		}
		devices = withDisk(devices, withBacking(disk, running))
	}
	setSnapshotDevices(snap, snapDevices)
	setVMDevices(vm, devices)
	return nil
}

func (p *peer) removeSnapshot(w http.ResponseWriter, r *http.Request, next http.Handler, body []byte) {
	req, err := decode(body)
	rs, ok := req.(*types.RemoveSnapshot_Task)
	if err != nil || !ok {
		next.ServeHTTP(w, r)
		return
	}
	snap, found := getSnapshot(rs.This.Value)
	if !found {
		next.ServeHTTP(w, r)
		return
	}
	vm, err := getVM(snap.Vm.Value)
	if err != nil {
		next.ServeHTTP(w, r)
		return
	}
	victims := []*simulator.VirtualMachineSnapshot{snap}
	if rs.RemoveChildren {
		victims = append(victims, descendants(snap)...)
	}
	restore := p.protectDisks(vm)
	rec := record(next, r)
	restore()
	if _, still := getSnapshot(snap.Self.Value); !still {
		p.mu.Lock()
		// Newest first: each victim's delta then still has the victim's backing as parent.
		for i := len(victims) - 1; i >= 0; i-- {
			if err := p.consolidate(vm, flatDisks(victims[i].Config.Hardware.Device)); err != nil {
				log.Printf("remove snapshot %s: %v", victims[i].Self.Value, err)
			}
		}
		p.mu.Unlock()
	}
	replay(w, rec)
}

func descendants(s *simulator.VirtualMachineSnapshot) []*simulator.VirtualMachineSnapshot {
	var out []*simulator.VirtualMachineSnapshot
	for _, c := range s.ChildSnapshot {
		if cs, ok := getSnapshot(c.Value); ok {
			out = append(out, cs)
			out = append(out, descendants(cs)...)
		}
	}
	return out
}

// consolidate removes, for each of the snapshot's disks, the delta made when it was taken.
func (p *peer) consolidate(vm *simulator.VirtualMachine, snapDisks []*types.VirtualDisk) error {
	for _, sd := range snapDisks {
		cur := findDisk(vm.Config.Hardware.Device, sd.Key)
		if cur == nil {
			continue
		}
		parentName := backingOf(sd).FileName
		deltaName, err := mergeChildOf(backingOf(cur), parentName)
		if err != nil {
			return err
		}
		if err := p.repoint(vm, sd.Key, deltaName, parentName); err != nil {
			return err
		}
	}
	return nil
}

// mergeChildOf merges the delta whose parent is parentName (in the running chain b)
// into it, relinks the delta's child, deletes the delta; returns the delta's name.
func mergeChildOf(b *types.VirtualDiskFlatVer2BackingInfo, parentName string) (string, error) {
	parentLocal, err := localPath(parentName)
	if err != nil {
		return "", err
	}
	c, err := openDisk(b)
	if err != nil {
		return "", err
	}
	defer c.close()
	j := c.indexOf(parentLocal)
	if j < 1 {
		return "", fmt.Errorf("%s has no delta above it in the chain of %s", parentName, b.FileName)
	}
	if err := c.mergeInto(j-1, j); err != nil {
		return "", err
	}
	deltaLocal, child := c.layers[j-1].path, ""
	if j >= 2 {
		child = c.layers[j-2].path
	}
	if err := touchDisk(parentLocal, child); err != nil {
		return "", err
	}
	removeDisk(deltaLocal)
	return sibling(parentName, filepath.Base(deltaLocal)), nil
}

// repoint: the VM's disk and every snapshot's copy of it, re-read from the descriptors,
// with a top that was the removed delta now naming its parent.
func (p *peer) repoint(vm *simulator.VirtualMachine, key int32, from, to string) error {
	rebuild := func(devices []types.BaseVirtualDevice) ([]types.BaseVirtualDevice, error) {
		d := findDisk(devices, key)
		if d == nil {
			return devices, nil
		}
		b := backingOf(d)
		top := b.FileName
		if top == from {
			top = to
		}
		nb, err := buildBacking(top, b.ChangeId, b)
		if err != nil {
			return nil, err
		}
		return withDisk(devices, withBacking(d, nb)), nil
	}
	devices, err := rebuild(vm.Config.Hardware.Device)
	if err != nil {
		return err
	}
	setVMDevices(vm, devices)
	for _, s := range snapshotsOf(vm) {
		sd, err := rebuild(s.Config.Hardware.Device)
		if err != nil {
			return err
		}
		setSnapshotDevices(s, sd)
	}
	return nil
}

func (p *peer) removeAllSnapshots(w http.ResponseWriter, r *http.Request, next http.Handler, body []byte) {
	req, err := decode(body)
	ra, ok := req.(*types.RemoveAllSnapshots_Task)
	if err != nil || !ok {
		next.ServeHTTP(w, r)
		return
	}
	vm, err := getVM(ra.This.Value)
	if err != nil {
		next.ServeHTTP(w, r)
		return
	}
	restore := p.protectDisks(vm)
	rec := record(next, r)
	restore()
	if len(snapshotsOf(vm)) == 0 {
		p.mu.Lock()
		for _, d := range flatDisks(vm.Config.Hardware.Device) {
			if err := foldAll(vm, d); err != nil {
				log.Printf("remove all snapshots of %s: %v", vm.Self.Value, err)
			}
		}
		p.mu.Unlock()
	}
	replay(w, rec)
}

// foldAll merges every delta of the disk into its base, oldest first so newer data wins.
func foldAll(vm *simulator.VirtualMachine, d *types.VirtualDisk) error {
	b := backingOf(d)
	c, err := openDisk(b)
	if err != nil {
		return err
	}
	base := len(c.layers) - 1
	for i := base - 1; i >= 0; i-- {
		if err := c.mergeInto(i, base); err != nil {
			c.close()
			return err
		}
	}
	var deltas []string
	for _, l := range c.layers[:base] {
		deltas = append(deltas, l.path)
	}
	basePath := c.layers[base].path
	c.close()
	if len(deltas) == 0 {
		return nil
	}
	if err := touchDisk(basePath, ""); err != nil {
		return err
	}
	for _, p := range deltas {
		removeDisk(p)
	}
	nb, err := buildBacking(sibling(b.FileName, filepath.Base(basePath)), b.ChangeId, b)
	if err != nil {
		return err
	}
	setVMDevices(vm, withDisk(vm.Config.Hardware.Device, withBacking(d, nb)))
	return nil
}
