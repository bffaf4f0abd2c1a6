// Package nodeps has no tests: listing must cope with it.
package nodeps

// Answer is the answer.
const Answer = 42
