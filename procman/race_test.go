//go:build race

package procman

// raceEnabled: the race detector shadows every touched heap page, doubling
// the RSS an allocation costs.
const raceEnabled = true
