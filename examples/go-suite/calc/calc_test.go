package calc

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// seenBefore reports false the first time it is called for name in the directory named by
// TESSERA_EXAMPLE_STATE_DIR, true afterwards (and true without the variable).
func seenBefore(t *testing.T, name string) bool {
	dir := os.Getenv("TESSERA_EXAMPLE_STATE_DIR")
	if dir == "" {
		return true
	}
	marker := filepath.Join(dir, "go-"+name)
	if _, err := os.Stat(marker); err == nil {
		return true
	}
	if err := os.WriteFile(marker, []byte("ran once\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return false
}

func TestAdd(t *testing.T) {
	t.Log("adding 2 and 2")
	if Add(2, 2) != 4 {
		t.Fatal("wrong sum")
	}
}

// Its name starts with another test's name: runners must select tests exactly.
func TestAddMany(t *testing.T) {
	if AddMany(1, 2, 3) != 6 {
		t.Fatal("wrong sum")
	}
}

func TestSlow(t *testing.T) {
	time.Sleep(400 * time.Millisecond)
}

func TestWrongAnswer(t *testing.T) {
	fmt.Println("about to compare")
	if got := Add(2, 2); got != 5 {
		t.Errorf("Add(2, 2) = %d, want 5", got)
	}
}

func TestSkipped(t *testing.T) {
	t.Skip("shows how runners report skipped tests")
}

func TestFlakyOnce(t *testing.T) {
	if !seenBefore(t, "TestFlakyOnce") {
		t.Fatal("first run fails on purpose")
	}
}

func TestTable(t *testing.T) {
	for _, tc := range []struct{ a, b, want int }{{1, 2, 3}, {2, 2, 4}} {
		t.Run(fmt.Sprintf("%d+%d", tc.a, tc.b), func(t *testing.T) {
			if Add(tc.a, tc.b) != tc.want {
				t.Fatal("wrong sum")
			}
		})
	}
}

func TestSubtestFails(t *testing.T) {
	t.Run("good", func(t *testing.T) {})
	t.Run("bad", func(t *testing.T) { t.Fatal("sub failure") })
}

func ExampleAdd() {
	fmt.Println(Add(1, 2))
	// Output: 3
}
