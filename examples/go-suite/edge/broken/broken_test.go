package broken

import "testing"

func TestTriple(t *testing.T) {
	if Triple(2) != notDefinedAnywhere {
		t.Fatal("wrong triple")
	}
}
