//go:build tools

// Package tools pins the Kubernetes control-plane binaries the e2e harness
// runs (built by `cargo xtask setup`, see xtask/src/kube.rs). Nothing
// imports this package; it only records the dependencies in go.mod.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
