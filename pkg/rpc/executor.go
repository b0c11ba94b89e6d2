package rpc

import "sync"

// executor runs work concurrently, bounded by a semaphore, except that work
// submitted under the same non-empty key runs one at a time in submission
// order (one instance's operations are serialized).
type executor struct {
	sem chan struct{}
	wg  sync.WaitGroup

	mu     sync.Mutex
	queues map[string][]func()
}

func newExecutor(limit int) *executor {
	if limit <= 0 {
		limit = 64
	}
	return &executor{sem: make(chan struct{}, limit), queues: map[string][]func(){}}
}

func (e *executor) run(fn func()) {
	e.sem <- struct{}{}
	defer func() { <-e.sem }()
	fn()
}

// Submit queues fn. It never blocks on running work.
func (e *executor) Submit(key string, fn func()) {
	e.wg.Add(1)
	if key == "" {
		go func() {
			defer e.wg.Done()
			e.run(fn)
		}()
		return
	}
	e.mu.Lock()
	q, busy := e.queues[key]
	e.queues[key] = append(q, fn)
	e.mu.Unlock()
	if busy {
		return
	}
	go e.drain(key)
}

func (e *executor) drain(key string) {
	for {
		e.mu.Lock()
		q := e.queues[key]
		if len(q) == 0 {
			delete(e.queues, key)
			e.mu.Unlock()
			return
		}
		fn := q[0]
		e.queues[key] = q[1:]
		e.mu.Unlock()
		e.run(fn)
		e.wg.Done()
	}
}

// Wait blocks until all submitted work is done or done is closed.
func (e *executor) Wait(done <-chan struct{}) bool {
	finished := make(chan struct{})
	go func() { e.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return true
	case <-done:
		return false
	}
}
