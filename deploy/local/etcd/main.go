// Command etcd is the upstream etcd server, built from the published
// go.etcd.io/etcd/server/v3 Go module at the version pinned in go.mod.
//
// Why not Debian's etcd-server package: bookworm ships etcd 3.4.23, and
// kube-apiserver 1.31+ relies on etcd health endpoints that only exist from
// etcd 3.4.29 / 3.5.11 on, so the Debian build is below kube-apiserver's floor.
// Kubernetes 1.34 is released and tested against etcd 3.6, so we pin 3.6.x.
// This is a separate Go module from ../kube-apiserver so the two dependency
// graphs (both pull grpc, otel, prometheus, ...) cannot collide.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
