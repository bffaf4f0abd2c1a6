// Package strutil is a second package, with a test name that also exists in calc.
package strutil

import "strings"

// Shout upper-cases s.
func Shout(s string) string { return strings.ToUpper(s) + "!" }
