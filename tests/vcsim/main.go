// vcsim launcher for hamal's tests: VMware's own simulator (govmomi 0.24.2, Debian package
// golang-github-vmware-govmomi-dev) as a process, with the datastore laid out as ESXi lays
// it out and the disk operations a backup tool depends on modelled after VMware's
// documents. It models VMware, not any client: each behaviour names its reference.
//
// References:
//
//	[VMDK]  VMware "Virtual Disk Format 5.0" (descriptor files, ESX Server sparse extents
//	        "COWD"); qemu block/vmdk.c (VMDK3Header, vmdk_open_vmfs_sparse) reads the same.
//	[API]   vSphere Web Services API reference: VirtualDiskFlatVer2BackingInfo, snapshot
//	        config, CreateSnapshot_Task, RemoveSnapshot_Task, RemoveAllSnapshots_Task,
//	        ReconfigVM_Task, QueryChangedDiskAreas / DiskChangeInfo, DatastoreSummary.type.
//	[vcsim] govmomi simulator source (what vcsim does itself: objects, tree, sessions).
//
// Behaviours (file: what, reference):
//
//	layout.go, descriptor.go: every VM disk is x.vmdk (createType="vmfs" descriptor) +
//	    x-flat.vmdk (sparse file of -disk-mb); the backing names the descriptor. [VMDK][API]
//	cowd.go, chain.go: snapshot deltas are x-00000N.vmdk (vmfsSparse) + x-00000N-delta.vmdk
//	    (COWD, 1-sector grains), chained by parentFileNameHint/parentCID. [VMDK]
//	snapshots.go: CreateSnapshot freezes the backing in the snapshot config and starts a
//	    delta; RemoveSnapshot consolidates the snapshot's delta into its parent;
//	    RemoveAllSnapshots folds every delta into the base. [API] (consolidation as ESXi)
//	reconfig.go: growing a disk is refused while it has snapshots, otherwise extends the
//	    flat extent; disks created by ReconfigVM get the ESXi layout; device edits (e.g.
//	    diskMode) keep the files whatever fileOperation the client sent. [API][VMDK]
//	guard.go: vcsim 0.24.2 may delete a disk descriptor when removing a snapshot (its
//	    layoutEx keys get renumbered); ESXi never does, so we put such files back. [vcsim]
//	cbt.go: QueryChangedDiskAreas with changeIds "<epoch>/<n>" from content copies kept
//	    outside the datastores, 8 MiB per answer, 64 KiB units. [API] (vcsim has none)
//	control.go: /hamal/ endpoints to write/read as the guest, reset CBT, inject CBT
//	    faults, set a datastore's type, make /sdk fail like a reverse proxy. (tests only)
//	Local datastores report DatastoreSummary.type "VMFS" (vcsim says "local"). [API]
//
// Not modelled: SEsparse deltas (ESXi 6.5+ default on VMFS6 and for disks > 2 TB),
// monolithicSparse/hosted formats, vSAN objects and VVOLs (a datastore's type can be set,
// its files stay VMFS-style), RDMs, linked clones, RevertToSnapshot on disk files, snapshot
// trees with branches, consolidate=false, real CBT semantics (the ctk file; areas written
// with unchanged bytes; allocated-but-zero areas), changeTrackingEnabled being required,
// new CIDs on guest writes, vm.layoutEx listing delta files (vcsim's own layout is stale
// after our changes), NFC/HttpNfcLease exports, session checks on /folder.
//
// Flags: -vms, -tls, -user (password from $VCSIM_PASSWORD, never argv), -disk-mb,
// -cert/-key (PEM; without them vcsim's own certificate). Prints the SDK URL on stdout,
// serves until SIGTERM/SIGINT, then removes every temp dir it made.
// Build: cd tests/vcsim && GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim .
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	vms := flag.Int("vms", 2, "VMs per host")
	useTLS := flag.Bool("tls", true, "serve https")
	user := flag.String("user", "hamal", "user name Login accepts")
	diskMB := flag.Int64("disk-mb", 64, "capacity of each VM's disk, MiB")
	certFile := flag.String("cert", "", "PEM certificate to serve (with -key)")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	flag.Parse()
	if err := run(*vms, *useTLS, *user, *diskMB, *certFile, *keyFile); err != nil {
		log.Fatal(err)
	}
}

func run(vms int, useTLS bool, user string, diskMB int64, certFile, keyFile string) error {
	// The password comes from the environment, never a command line.
	pass := os.Getenv("VCSIM_PASSWORD")
	if pass == "" {
		return fmt.Errorf("VCSIM_PASSWORD is not set")
	}
	if diskMB <= 0 {
		return fmt.Errorf("-disk-mb must be positive")
	}
	var tlsConfig *tls.Config
	if useTLS {
		tlsConfig = new(tls.Config)
		if certFile != "" || keyFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("-cert/-key: %v", err)
			}
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
	}
	cbtDir, err := os.MkdirTemp("", "hamal-vcsim-cbt-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cbtDir)

	model := simulator.VPX()
	model.Machine = vms
	defer model.Remove() // the datastore temp dirs
	if err := model.Create(); err != nil {
		return err
	}
	p := newPeer(diskMB, cbtDir)
	if err := p.layOut(); err != nil {
		return err
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(user, pass)}
	model.Service.TLS = tlsConfig
	server := model.Service.NewServer()
	defer server.Close()
	// No request has been served yet, so swapping the handler here is safe.
	server.Config.Handler = p.wrap(server.Config.Handler)
	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return nil
}

// layOut replaces vcsim's empty disk files with ESXi's layout at -disk-mb, and reports
// the local datastores as VMFS.
func (p *peer) layOut() error {
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		for _, d := range flatDisks(vm.Config.Hardware.Device) {
			local, err := localPath(backingOf(d).FileName)
			if err != nil {
				return err
			}
			adapter, ide := adapterOf(vm.Config.Hardware.Device, d)
			if err := makeFlatDisk(local, p.diskMB<<20, adapter, ide, backingOf(d).Uuid, hwVersion(vm)); err != nil {
				return err
			}
		}
		if err := p.normaliseDisks(vm, nil); err != nil {
			return err
		}
	}
	return nil
}
