package main

// ReconfigVM_Task (vSphere API) as it touches disks:
//   - growing a disk's capacityInKB/capacityInBytes: ESXi refuses to extend a disk that
//     has snapshots (its running file is a delta; VMware KB "Increasing the size of a
//     virtual disk": the disk cannot be extended while snapshots exist). We answer the
//     task with fault InvalidDeviceOperation, "Invalid operation for device '0'." (the
//     message vSphere users report for this case; not checked against a host). Without
//     snapshots the flat extent is extended and the descriptor's sectors rewritten.
//     Shrinking is refused the same way (ESXi cannot shrink a disk).
//   - disks added with fileOperation "create" get the ESXi layout (layout.go) in place of
//     vcsim's two empty files;
//   - every other edit (diskMode, ...) is vcsim's; afterwards each disk's backing is re-read
//     from its descriptors so the chain and the files stay as they are.

import (
	"log"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

type growth struct {
	key      int32
	capacity int64
}

func (p *peer) reconfig(w http.ResponseWriter, r *http.Request, next http.Handler, body []byte) {
	req, err := decode(body)
	rc, ok := req.(*types.ReconfigVM_Task)
	if err != nil || !ok {
		next.ServeHTTP(w, r)
		return
	}
	vm, err := getVM(rc.This.Value)
	if err != nil {
		next.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	grows, refuse := p.resizes(vm, rc.Spec)
	if refuse != "" {
		failedTask(w, "ReconfigVM_Task", vm.Self, &types.InvalidDeviceOperation{
			InvalidDeviceSpec: types.InvalidDeviceSpec{DeviceIndex: 0}}, refuse)
		return
	}
	tops := keepFiles(vm, &rc.Spec)
	if len(tops) > 0 {
		if err := setBody(r, &methods.ReconfigVM_TaskBody{Req: rc}); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	rec := record(next, r)
	for _, g := range grows {
		if err := growDisk(vm, g); err != nil {
			log.Printf("extend disk %d of %s: %v", g.key, vm.Self.Value, err)
		}
	}
	if err := p.normaliseDisks(vm, tops); err != nil {
		log.Printf("reconfigure %s: %v", vm.Self.Value, err)
	}
	replay(w, rec)
}

// keepFiles: ESXi leaves a disk's files alone when a device edit changes its settings
// (whatever fileOperation the client sent; govmomi's EditDevice sends "replace"). vcsim
// 0.24.2 would truncate the descriptor ("replace") or want an x-00000N-flat.vmdk a delta
// does not have (""), so we hand vcsim the edit against the base disk with no file
// operation and restore the real running file afterwards. Returns key -> running file.
func keepFiles(vm *simulator.VirtualMachine, spec *types.VirtualMachineConfigSpec) map[int32]string {
	tops := map[int32]string{}
	for _, ch := range spec.DeviceChange {
		ds := ch.GetVirtualDeviceConfigSpec()
		nd, ok := ds.Device.(*types.VirtualDisk)
		if !ok || ds.Operation != types.VirtualDeviceConfigSpecOperationEdit {
			continue
		}
		cur := findDisk(vm.Config.Hardware.Device, nd.Key)
		nb, ok := nd.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if cur == nil || !ok {
			continue
		}
		base := backingOf(cur)
		for base.Parent != nil {
			base = base.Parent
		}
		tops[nd.Key] = backingOf(cur).FileName
		copied := *nb
		copied.FileName, copied.Parent = base.FileName, nil
		nd.Backing = &copied
		ds.FileOperation = ""
	}
	return tops
}

// resizes: the disk edits that change capacity, or the reason to refuse the whole spec.
func (p *peer) resizes(vm *simulator.VirtualMachine, spec types.VirtualMachineConfigSpec) ([]growth, string) {
	var out []growth
	for _, ch := range spec.DeviceChange {
		ds := ch.GetVirtualDeviceConfigSpec()
		nd, ok := ds.Device.(*types.VirtualDisk)
		if !ok || ds.Operation != types.VirtualDeviceConfigSpecOperationEdit {
			continue
		}
		cur := findDisk(vm.Config.Hardware.Device, nd.Key)
		if cur == nil {
			continue
		}
		want := nd.CapacityInKB * 1024
		if nd.CapacityInBytes > want {
			want = nd.CapacityInBytes
		}
		have := cur.CapacityInBytes
		switch {
		case want == 0 || want == have:
			continue
		case want < have:
			return nil, "Invalid operation for device '0'."
		case len(snapshotsOf(vm)) > 0 || backingOf(cur).Parent != nil:
			return nil, "Invalid operation for device '0'."
		}
		out = append(out, growth{nd.Key, (want + sector - 1) / sector * sector})
	}
	return out, ""
}

func growDisk(vm *simulator.VirtualMachine, g growth) error {
	d := findDisk(vm.Config.Hardware.Device, g.key)
	if d == nil {
		return nil
	}
	local, err := localPath(backingOf(d).FileName)
	if err != nil {
		return err
	}
	return growFlatDisk(local, g.capacity)
}

// normaliseDisks: ESXi files for new disks, and backings re-read from the descriptors.
// tops: disks whose running file is to be restored (see keepFiles).
func (p *peer) normaliseDisks(vm *simulator.VirtualMachine, tops map[int32]string) error {
	devices := vm.Config.Hardware.Device
	for _, d := range flatDisks(devices) {
		b := backingOf(d)
		local, err := localPath(b.FileName)
		if err != nil {
			return err
		}
		if _, err := readDescriptor(local); err != nil { // vcsim's empty placeholder
			capacity := d.CapacityInKB * 1024
			if d.CapacityInBytes > capacity {
				capacity = d.CapacityInBytes
			}
			if capacity == 0 {
				capacity = p.diskMB << 20
			}
			adapter, ide := adapterOf(devices, d)
			if err := makeFlatDisk(local, capacity, adapter, ide, b.Uuid, hwVersion(vm)); err != nil {
				return err
			}
		}
		top := b.FileName
		if t, ok := tops[d.Key]; ok {
			top = t
		}
		nb, err := buildBacking(top, b.ChangeId, b)
		if err != nil {
			return err
		}
		devices = withDisk(devices, withBacking(d, nb))
	}
	setVMDevices(vm, devices)
	return nil
}

// hwVersion: ddb.virtualHWVersion from the VM's "vmx-13".
func hwVersion(vm *simulator.VirtualMachine) int {
	n := 0
	for _, c := range vm.Config.Version {
		if c >= '0' && c <= '9' {
			n = n*10 + int(c-'0')
		}
	}
	if n == 0 {
		n = 13
	}
	return n
}
