package main

// The API's view of a disk chain: VirtualDiskFlatVer2BackingInfo (vSphere Web Services
// API reference) with fileName = the descriptor, parent = the backing of the disk below,
// deltaDiskFormat = "redoLogFormat" for a vmfsSparse delta, contentId = the descriptor's
// ddb.longContentID. Built from the descriptor files, so it always matches the datastore.

import (
	"path/filepath"

	"github.com/vmware/govmomi/vim25/types"
)

// buildBacking: the backing for the chain whose newest descriptor is fileName; other
// fields (diskMode, uuid, datastore...) come from tmpl; changeId is the top's only.
func buildBacking(fileName, changeID string, tmpl *types.VirtualDiskFlatVer2BackingInfo) (*types.VirtualDiskFlatVer2BackingInfo, error) {
	local, err := localPath(fileName)
	if err != nil {
		return nil, err
	}
	d, err := readDescriptor(local)
	if err != nil {
		return nil, err
	}
	b := *tmpl
	b.FileName = fileName
	b.ChangeId = changeID
	b.ContentId = d.DDB["ddb.longContentID"]
	b.Parent = nil
	b.DeltaDiskFormat = ""
	b.DeltaGrainSize = 0
	if d.sparse() {
		// deltaGrainSize stays unset: the API defines it for seSparseFormat only.
		b.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatRedoLogFormat)
	}
	if d.ParentHint != "" {
		parent, err := buildBacking(sibling(fileName, filepath.Base(d.ParentHint)), "", tmpl)
		if err != nil {
			return nil, err
		}
		b.Parent = parent
	}
	return &b, nil
}

// withBacking: a copy of the disk with the given backing and the chain's capacity.
func withBacking(disk *types.VirtualDisk, b *types.VirtualDiskFlatVer2BackingInfo) *types.VirtualDisk {
	nd := *disk
	nd.Backing = b
	if local, err := localPath(b.FileName); err == nil {
		if d, err := readDescriptor(local); err == nil {
			nd.CapacityInBytes = d.Sectors * sector
			nd.CapacityInKB = nd.CapacityInBytes / 1024
		}
	}
	return &nd
}

// openDisk opens the chain of a backing's top descriptor.
func openDisk(b *types.VirtualDiskFlatVer2BackingInfo) (*chain, error) {
	local, err := localPath(b.FileName)
	if err != nil {
		return nil, err
	}
	return openChain(local)
}
