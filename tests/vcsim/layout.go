package main

// Disk files laid out as ESXi lays them out on a VMFS datastore (VMware "Virtual Disk
// Format 5.0"; the vSphere API's VirtualDiskFlatVer2BackingInfo names the descriptor,
// never the extent):
//   x.vmdk            descriptor, createType="vmfs", extent RW <sectors> VMFS "x-flat.vmdk"
//   x-flat.vmdk       the data, a sparse file of the capacity (thin: nothing written yet)
//   x-000001.vmdk     delta descriptor, createType="vmfsSparse", parentFileNameHint="x.vmdk"
//   x-000001-delta.vmdk  COWD sparse extent (cowd.go)
// Deltas are numbered by the base disk's name with 6 digits, the next free number.

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// makeFlatDisk (re)creates x.vmdk + x-flat.vmdk for a new, empty disk.
func makeFlatDisk(descPath string, capacity int64, adapter string, ide bool, uuid string, hw int) error {
	base := strings.TrimSuffix(filepath.Base(descPath), ".vmdk")
	flat := filepath.Join(filepath.Dir(descPath), base+"-flat.vmdk")
	_ = os.Remove(flat) // vcsim's empty placeholder
	f, err := os.Create(flat)
	if err != nil {
		return err
	}
	err = f.Truncate(capacity)
	f.Close()
	if err != nil {
		return err
	}
	d := &descriptor{ParentCID: "ffffffff", CreateType: "vmfs", Sectors: capacity / sector,
		ExtentType: "VMFS", Extent: base + "-flat.vmdk", DDB: map[string]string{
			"ddb.adapterType":      adapter,
			"ddb.thinProvisioned":  "1",
			"ddb.uuid":             ddbUUID(uuid),
			"ddb.virtualHWVersion": fmt.Sprint(hw),
		}}
	setGeometry(d, ide)
	d.touch()
	return writeDescriptor(descPath, d)
}

// growFlatDisk extends a base disk (no deltas) to capacity: the extent file and the
// descriptor's extent sectors and geometry, as ESXi's disk extend does.
func growFlatDisk(descPath string, capacity int64) error {
	d, err := readDescriptor(descPath)
	if err != nil {
		return err
	}
	if d.sparse() {
		return fmt.Errorf("%s is a delta; a disk with snapshots cannot be extended", descPath)
	}
	if err := os.Truncate(filepath.Join(filepath.Dir(descPath), d.Extent), capacity); err != nil {
		return err
	}
	d.Sectors = capacity / sector
	setGeometry(d, d.DDB["ddb.adapterType"] == "ide")
	d.touch()
	return writeDescriptor(descPath, d)
}

var deltaSuffix = regexp.MustCompile(`-\d{6}$`)

// makeDelta creates the next x-00000N.vmdk + x-00000N-delta.vmdk on top of parentPath
// (a descriptor) and returns the new descriptor's path.
func makeDelta(parentPath string) (string, error) {
	parent, err := readDescriptor(parentPath)
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(parentPath)
	base := deltaSuffix.ReplaceAllString(strings.TrimSuffix(filepath.Base(parentPath), ".vmdk"), "")
	var name string
	for n := 1; ; n++ {
		name = fmt.Sprintf("%s-%06d", base, n)
		_, e1 := os.Stat(filepath.Join(dir, name+".vmdk"))
		_, e2 := os.Stat(filepath.Join(dir, name+"-delta.vmdk"))
		if os.IsNotExist(e1) && os.IsNotExist(e2) {
			break
		}
	}
	if err := createCOWD(filepath.Join(dir, name+"-delta.vmdk"), parent.Sectors); err != nil {
		return "", err
	}
	d := &descriptor{ParentCID: parent.CID, CreateType: "vmfsSparse",
		ParentHint: filepath.Base(parentPath), Sectors: parent.Sectors,
		ExtentType: "VMFSSPARSE", Extent: name + "-delta.vmdk", DDB: map[string]string{}}
	d.touch()
	descPath := filepath.Join(dir, name+".vmdk")
	return descPath, writeDescriptor(descPath, d)
}

// removeDisk deletes a delta's descriptor and extent (after consolidation).
func removeDisk(descPath string) {
	if d, err := readDescriptor(descPath); err == nil {
		_ = os.Remove(filepath.Join(filepath.Dir(descPath), d.Extent))
	}
	_ = os.Remove(descPath)
}

// reparent points the descriptor at a new parent, with the parent's current CID.
func reparent(descPath, parentPath string) error {
	d, err := readDescriptor(descPath)
	if err != nil {
		return err
	}
	p, err := readDescriptor(parentPath)
	if err != nil {
		return err
	}
	d.ParentHint = filepath.Base(parentPath)
	d.ParentCID = p.CID
	return writeDescriptor(descPath, d)
}

// touchDisk gives a disk a new CID after its content changed and fixes the child's
// parentCID (child may be "").
func touchDisk(descPath, child string) error {
	d, err := readDescriptor(descPath)
	if err != nil {
		return err
	}
	d.touch()
	if err := writeDescriptor(descPath, d); err != nil {
		return err
	}
	if child != "" {
		return reparent(child, descPath)
	}
	return nil
}
