// cloudpods-kube-apiserver: the CloudPods test environment's Kubernetes API
// server. It serves apiextensions.k8s.io (CustomResourceDefinitions) and the
// custom resources they define, from upstream k8s.io/apiextensions-apiserver,
// with etcd as storage, on a loopback address. It has no core API.
//
// Subcommands:
//
//	serve --state-dir DIR --etcd-servers URL [generic apiserver flags]
//	    run the server; writes certificates, token, kubeconfig and
//	    server-url into DIR (certificates and token are reused).
//	wait-ready --state-dir DIR [--timeout 90s] [--watch-pid PID ...]
//	    poll DIR's server /readyz until it answers ok.
//	version
//	    print the Kubernetes version this binary was built from.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/version"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cloudpods-kube-apiserver serve|wait-ready|version [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = runServer(args)
	case "wait-ready":
		err = runWaitReady(args)
	case "version":
		fmt.Println(version.Get().GitVersion)
	default:
		err = fmt.Errorf("unknown subcommand %q (want serve, wait-ready or version)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cloudpods-kube-apiserver:", err)
		os.Exit(1)
	}
}
