//go:build tools

// Package tools pins the Helm v4 CLI the chart's tests run (built by
// `cargo xtask setup`, see xtask/src/helm.rs). Nothing imports this package;
// it only records the dependency in go.mod.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
