// Package peers benchmarks other Go actor runtimes ("peers") with the same
// benchmark names and semantics as herd's own benchmarks, so the results of
// both can be compared side by side (for example with benchstat) from one run.
//
// It is a separate Go module on purpose: herd itself must never depend on the
// peer runtimes, so their dependencies are confined to this module's go.mod.
// The package contains no production code; everything of interest lives in
// the _test.go files.
//
// Peers currently covered:
//   - Proto.Actor Go (github.com/asynkron/protoactor-go), see protoactor_test.go
//     and, for its gRPC remote, remote_test.go.
package peers
