package main

// Access to the simulator's objects: VMs, their disks and snapshots, datastore paths.
// Device lists are replaced, never edited in place: vcsim's CreateSnapshot copies
// vm.Config by value, so a snapshot's config shares the VM's device slice and pointers.

import (
	"fmt"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func getVM(id string) (*simulator.VirtualMachine, error) {
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}).(*simulator.VirtualMachine)
	if !ok {
		return nil, fmt.Errorf("no virtual machine %q", id)
	}
	return vm, nil
}

func getSnapshot(id string) (*simulator.VirtualMachineSnapshot, bool) {
	s, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: id}).(*simulator.VirtualMachineSnapshot)
	return s, ok
}

// flatDisks: the disks with a FlatVer2 backing (the only backing this launcher models).
func flatDisks(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if _, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				out = append(out, disk)
			}
		}
	}
	return out
}

func findDisk(devices []types.BaseVirtualDevice, key int32) *types.VirtualDisk {
	for _, d := range flatDisks(devices) {
		if d.Key == key {
			return d
		}
	}
	return nil
}

func backingOf(d *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	return d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
}

// withDisk returns a new device list where the disk with nd's key is replaced by nd.
func withDisk(devices []types.BaseVirtualDevice, nd *types.VirtualDisk) []types.BaseVirtualDevice {
	out := make([]types.BaseVirtualDevice, len(devices))
	copy(out, devices)
	for i, d := range out {
		if d.GetVirtualDevice().Key == nd.Key {
			out[i] = nd
		}
	}
	return out
}

func setVMDevices(vm *simulator.VirtualMachine, devices []types.BaseVirtualDevice) {
	simulator.Map.WithLock(vm, func() {
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: devices}})
	})
}

func setSnapshotDevices(s *simulator.VirtualMachineSnapshot, devices []types.BaseVirtualDevice) {
	simulator.Map.WithLock(s, func() { s.Config.Hardware.Device = devices })
}

// snapshotsOf: every snapshot of the VM, parents before children.
func snapshotsOf(vm *simulator.VirtualMachine) []*simulator.VirtualMachineSnapshot {
	var out []*simulator.VirtualMachineSnapshot
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(t []types.VirtualMachineSnapshotTree) {
		for _, n := range t {
			if s, ok := getSnapshot(n.Snapshot.Value); ok {
				out = append(out, s)
			}
			walk(n.ChildSnapshotList)
		}
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Snapshot != nil {
			walk(vm.Snapshot.RootSnapshotList)
		}
	})
	return out
}

// adapterOf: ddb.adapterType for the disk's controller, as ESXi writes it.
func adapterOf(devices []types.BaseVirtualDevice, disk *types.VirtualDisk) (string, bool) {
	for _, d := range devices {
		if d.GetVirtualDevice().Key != disk.ControllerKey {
			continue
		}
		switch d.(type) {
		case *types.ParaVirtualSCSIController:
			return "pvscsi", false
		case *types.VirtualBusLogicController:
			return "buslogic", false
		case *types.VirtualIDEController:
			return "ide", true
		}
	}
	return "lsilogic", false
}

// localPath: "[LocalDS_0] dir/x.vmdk" -> the file under that datastore's directory.
func localPath(dsPath string) (string, error) {
	end := strings.Index(dsPath, "]")
	if !strings.HasPrefix(dsPath, "[") || end < 0 {
		return "", fmt.Errorf("not a datastore path: %q", dsPath)
	}
	name, rel := dsPath[1:end], strings.TrimSpace(dsPath[end+1:])
	ds := datastoreByName(name)
	if ds == nil {
		return "", fmt.Errorf("no datastore %q", name)
	}
	return path.Join(ds.Info.GetDatastoreInfo().Url, rel), nil
}

// sibling: the datastore path of another file in the same directory.
func sibling(dsPath, base string) string {
	if i := strings.LastIndex(dsPath, "/"); i >= 0 {
		return dsPath[:i+1] + base
	}
	end := strings.Index(dsPath, "]")
	return dsPath[:end+1] + " " + base
}

func datastoreByName(name string) *simulator.Datastore {
	for _, e := range simulator.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == name {
			return ds
		}
	}
	return nil
}
