//go:build !race

package procman

const raceEnabled = false
