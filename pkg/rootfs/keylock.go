package rootfs

import (
	"context"
	"sync"
)

// keyLocks is a set of mutexes keyed by string, created on demand and
// dropped when unused. Lock waits honour a context.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{} // holds one token while locked
	refs int           // holders + waiters
}

// lock takes the lock for key, or fails with ctx.Err(). The returned
// function releases it and must be called exactly once.
func (k *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()

	select {
	case l.ch <- struct{}{}:
		return func() {
			<-l.ch
			k.put(key, l)
		}, nil
	case <-ctx.Done():
		k.put(key, l)
		return nil, ctx.Err()
	}
}

func (k *keyLocks) put(key string, l *keyLock) {
	k.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(k.m, key)
	}
	k.mu.Unlock()
}

// lockNoWait takes the lock for key if it is free; ok is false if someone
// holds it.
func (k *keyLocks) lockNoWait(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
		return func() {
			<-l.ch
			k.put(key, l)
		}, true
	default:
		k.put(key, l)
		return nil, false
	}
}
