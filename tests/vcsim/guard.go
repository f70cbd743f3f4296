package main

// A guard around vcsim's snapshot removal. vcsim 0.24.2 deletes a removed snapshot's
// files by vm.layoutEx file key, and its RefreshStorageInfo renumbers those keys (it drops
// every file, since it stats the "[ds] path" string, then re-adds them), so the key it
// deletes can name a disk descriptor instead of the .vmsn. ESXi never deletes a disk that
// is still in use, so we keep a hard link of every disk file across the call and put back
// what vcsim removed; consolidation (snapshots.go) then deletes exactly the merged deltas.

import (
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
)

// protectDisks links the VM's .vmdk files aside; the returned func restores any vcsim
// removed and drops the links.
func (p *peer) protectDisks(vm *simulator.VirtualMachine) func() {
	dir, err := os.MkdirTemp(p.cbt.dir, "guard-")
	if err != nil {
		return func() {}
	}
	saved := map[string]string{}
	for _, d := range flatDisks(vm.Config.Hardware.Device) {
		local, err := localPath(backingOf(d).FileName)
		if err != nil {
			continue
		}
		files, _ := filepath.Glob(filepath.Join(filepath.Dir(local), "*.vmdk"))
		for _, f := range files {
			keep := filepath.Join(dir, strings.ReplaceAll(f, "/", "_"))
			if os.Link(f, keep) == nil || copyFile(f, keep) == nil {
				saved[f] = keep
			}
		}
	}
	return func() {
		for f, keep := range saved {
			if _, err := os.Stat(f); os.IsNotExist(err) {
				log.Printf("vcsim removed %s while removing a snapshot; restored", f)
				if os.Link(keep, f) != nil {
					_ = copyFile(keep, f)
				}
			}
		}
		os.RemoveAll(dir)
	}
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
	_, err = io.Copy(out, in)
	return err
}
