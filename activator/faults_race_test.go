//go:build faults && race

package activator

// faultsRace: under the race detector every spawn of the test binary and
// every request costs several times more; the fault tests scale down.
const faultsRace = true
