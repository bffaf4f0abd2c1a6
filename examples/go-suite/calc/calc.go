// Package calc is a tiny library for the go test runner's example suite.
package calc

// Add adds two numbers.
func Add(a, b int) int { return a + b }

// AddMany adds many numbers.
func AddMany(xs ...int) int {
	total := 0
	for _, x := range xs {
		total += x
	}
	return total
}
