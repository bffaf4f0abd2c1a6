package mainfail

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		fmt.Println("TestMain: failing the package on purpose")
		code = 1
	}
	os.Exit(code)
}

func TestFine(t *testing.T) {}
