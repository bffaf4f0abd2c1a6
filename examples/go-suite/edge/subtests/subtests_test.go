package subtests

import (
	"fmt"
	"testing"
)

func TestNested(t *testing.T) {
	t.Run("outer", func(t *testing.T) {
		t.Run("inner/with slash", func(t *testing.T) {})
		t.Run("deeper", func(t *testing.T) {
			t.Run("leaf", func(t *testing.T) {})
		})
	})
	t.Run("other", func(t *testing.T) {})
}

func TestNestedFails(t *testing.T) {
	t.Run("fine", func(t *testing.T) {})
	t.Run("broken", func(t *testing.T) {
		t.Run("leaf", func(t *testing.T) {
			if Double(2) != 5 {
				t.Errorf("Double(2) = %d, want 5 (on purpose)", Double(2))
			}
		})
	})
}

func TestParallel(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		n := n
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			if Double(n) != n+n {
				t.Fatal("wrong double")
			}
		})
	}
}

func TestSkippedSubtest(t *testing.T) {
	t.Run("runs", func(t *testing.T) {})
	t.Run("skips", func(t *testing.T) { t.Skip("not today") })
}

func TestLong(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped under -short")
	}
}

func FuzzDouble(f *testing.F) {
	f.Add(1)
	f.Add(7)
	f.Fuzz(func(t *testing.T, n int) {
		if Double(n) != n+n {
			t.Fatal("wrong double")
		}
	})
}

func BenchmarkDouble(b *testing.B) {
	for i := 0; i < b.N; i++ {
		Double(i)
	}
}

func ExampleDouble() {
	fmt.Println(Double(21))
	// Output: 42
}

func ExampleDouble_wrong() {
	fmt.Println(Double(2))
	// Output: 5
}

// An example without an output comment is compiled but not run, and not listed.
func ExampleDouble_unchecked() {
	fmt.Println(Double(3))
}
