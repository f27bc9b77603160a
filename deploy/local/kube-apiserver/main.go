// Command kube-apiserver is the upstream Kubernetes API server, built from the
// published k8s.io/kubernetes Go module at the version pinned in go.mod.
//
// It mirrors k8s.io/kubernetes/cmd/kube-apiserver/apiserver.go exactly; the only
// reason this file exists is that k8s.io/kubernetes' own go.mod maps its
// k8s.io/* staging modules to local ./staging paths, so a consumer has to
// re-map them to their published v0.Y.Z versions (see go.mod).
//
// Built by deploy/local/build.sh; do not `go install` it by hand unless you
// also pass the -ldflags from that script (they set the reported version).
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
