// vcsim launcher for hamal's tests: VMware's own simulator (govmomi, Debian package
// golang-github-vmware-govmomi-dev) as a process. Login accepts -user with the password
// in $VCSIM_PASSWORD. Prints the SDK URL on stdout, then serves until killed.
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
)

func main() {
	vms := flag.Int("vms", 2, "VMs per host")
	useTLS := flag.Bool("tls", true, "serve https")
	user := flag.String("user", "hamal", "user name Login accepts")
	flag.Parse()
	// The password comes from the environment, never a command line.
	pass := os.Getenv("VCSIM_PASSWORD")
	if pass == "" {
		log.Fatal("VCSIM_PASSWORD is not set")
	}

	model := simulator.VPX()
	model.Machine = *vms
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, pass)}
	if *useTLS {
		model.Service.TLS = new(tls.Config)
	}
	server := model.Service.NewServer()
	defer server.Close()
	// CBT emulation in front of the simulator's handlers (cbt.go); no request has been
	// served yet, so swapping the handler here is safe.
	server.Config.Handler = newCBT().wrap(server.Config.Handler)
	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
