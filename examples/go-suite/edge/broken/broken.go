// Package broken builds, but its tests do not.
package broken

// Triple triples n.
func Triple(n int) int { return 3 * n }
