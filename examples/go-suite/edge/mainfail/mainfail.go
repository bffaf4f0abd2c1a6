// Package mainfail's test binary fails after its tests pass.
package mainfail
