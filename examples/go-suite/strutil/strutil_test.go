package strutil

import (
	"testing"
	"time"
)

func TestAdd(t *testing.T) {
	time.Sleep(200 * time.Millisecond)
	if Shout("hi") != "HI!" {
		t.Fatal("not shouting")
	}
}

func BenchmarkShout(b *testing.B) {
	for i := 0; i < b.N; i++ {
		Shout("hi")
	}
}
