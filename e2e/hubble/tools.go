//go:build tools

// Package tools pins the Hubble CLI the flow tests run against the agent's
// Hubble API (built by `cargo xtask setup`, see xtask/src/hubble.rs).
// Nothing imports this package; it only records the dependency in go.mod.
package tools

import (
	_ "github.com/cilium/cilium/hubble"
)
