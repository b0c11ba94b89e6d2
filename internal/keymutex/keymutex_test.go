package keymutex

import (
	"sync"
	"testing"
	"time"
)

func TestSerializesOneKeyOnly(t *testing.T) {
	var m Map
	unlockA := m.Lock("a")
	got := make(chan string, 2)
	go func() { defer m.Lock("a")(); got <- "a" }()
	go func() { defer m.Lock("b")(); got <- "b" }()
	if v := <-got; v != "b" {
		t.Fatalf("%s ran while a was held", v)
	}
	select {
	case v := <-got:
		t.Fatalf("%s ran while a was held", v)
	case <-time.After(50 * time.Millisecond):
	}
	unlockA()
	if v := <-got; v != "a" {
		t.Fatalf("got %s", v)
	}
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); m.Lock("c")() }()
	}
	wg.Wait()
	if len(m.locks) != 0 {
		t.Errorf("%d idle keys kept", len(m.locks))
	}
}
