package netplug

import (
	"fmt"
	"testing"
)

// BenchmarkPlugUnplug plugs and unplugs one VIF on an existing bridge, in a
// namespace of its own.
func BenchmarkPlugUnplug(b *testing.B) {
	ns, _ := detachedNS(b)
	p := nsPlugger(b, ns)
	ctx := b.Context()
	vif := testVIF(0, BridgeName(testNet), 1450)
	if _, err := p.Plug(ctx, vif); err != nil { // makes the bridge
		b.Fatal(err)
	}
	if err := p.Unplug(ctx, vif); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := p.Plug(ctx, vif); err != nil {
			b.Fatal(err)
		}
		if err := p.Unplug(ctx, vif); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPlugNth measures Plug, Unplug, and Plug of an already plugged VIF
// (the idempotent path) for one more VIF on a bridge that already has N
// ports. Each N has its own namespace, emptied port by port afterwards so
// that no namespace teardown runs in the background of the next N.
func BenchmarkPlugNth(b *testing.B) {
	for _, n := range []int{0, 100, 500} {
		ns, _ := detachedNS(b)
		p := nsPlugger(b, ns)
		br := BridgeName(testNet)
		for i := range n {
			if _, err := p.Plug(b.Context(), testVIF(i+1, br, 1450)); err != nil {
				b.Fatal(err)
			}
		}
		vif := testVIF(0, br, 1450)
		b.Run(fmt.Sprintf("ports=%d/plug", n), func(b *testing.B) {
			ctx := b.Context()
			for b.Loop() {
				if _, err := p.Plug(ctx, vif); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := p.Unplug(ctx, vif); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
		b.Run(fmt.Sprintf("ports=%d/unplug", n), func(b *testing.B) {
			ctx := b.Context()
			for b.Loop() {
				b.StopTimer()
				if _, err := p.Plug(ctx, vif); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := p.Unplug(ctx, vif); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("ports=%d/plug-again", n), func(b *testing.B) {
			ctx := b.Context()
			if _, err := p.Plug(ctx, vif); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := p.Plug(ctx, vif); err != nil {
					b.Fatal(err)
				}
			}
			if err := p.Unplug(ctx, vif); err != nil {
				b.Fatal(err)
			}
		})
		for i := range n {
			if err := p.Unplug(b.Context(), testVIF(i+1, br, 1450)); err != nil {
				b.Fatal(err)
			}
		}
	}
}
