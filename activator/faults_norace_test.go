//go:build faults && !race

package activator

const faultsRace = false
