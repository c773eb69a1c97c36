//go:build race

package broker

// raceEnabled reports a build with the race detector.
const raceEnabled = true
