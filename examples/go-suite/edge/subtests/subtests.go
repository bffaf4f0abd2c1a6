// Package subtests holds the subtest shapes the go runner must report as go does.
package subtests

// Double doubles n.
func Double(n int) int { return 2 * n }
