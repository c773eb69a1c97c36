//go:build !race

package tree

// raceEnabled reports a build with the race detector.
const raceEnabled = false
