package imagebench

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Median returns the median of ds (the mean of the two middle values for
// an even count), 0 for none.
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// ds: the smallest value with at least p% of the values at or below it.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := int(float64(len(s))*p/100 + 0.999999999)
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// MedianInt64 is Median for byte counts.
func MedianInt64(vs []int64) int64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(vs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Meminfo is the part of /proc/meminfo (and /proc/slabinfo) the footprint
// measurement reads, in bytes.
type Meminfo struct {
	MemAvailable int64
	Slab         int64 // SReclaimable + SUnreclaim
	Percpu       int64 // per-CPU allocations (every mount has per-CPU counters)
	// SlabObjects is the sum over /proc/slabinfo of active objects times
	// their size, OvlInode that of the ovl_inode cache (0 when slabinfo
	// cannot be read). Unlike Slab, which counts whole slab pages, they
	// grow with every object even while slabs have free room (they do after
	// drop_caches).
	SlabObjects, OvlInode int64
}

// ParseMeminfo reads MemAvailable, Slab and Percpu from /proc/meminfo's format.
func ParseMeminfo(r io.Reader) (Meminfo, error) {
	var m Meminfo
	seen := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "MemAvailable":
			dst = &m.MemAvailable
		case "Slab":
			dst = &m.Slab
		case "Percpu":
			dst = &m.Percpu
		default:
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("meminfo: cannot parse %q", sc.Text())
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("meminfo: %q: %w", sc.Text(), err)
		}
		*dst = v << 10
		seen++
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if seen != 3 {
		return m, fmt.Errorf("meminfo: MemAvailable, Slab or Percpu missing")
	}
	return m, nil
}

// ParseSlabinfo returns, per slab cache of /proc/slabinfo (version 2.1),
// its active objects times their size in bytes.
func ParseSlabinfo(r io.Reader) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "slabinfo -") || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("slabinfo: cannot parse %q", line)
		}
		active, err1 := strconv.ParseInt(f[1], 10, 64)
		size, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("slabinfo: cannot parse %q", line)
		}
		out[f[0]] += active * size
	}
	return out, sc.Err()
}

// ParseByHand parses the "download US verify US prepare US" line byhand.sh
// prints.
func ParseByHand(out string) (download, verify, prepare time.Duration, err error) {
	f := strings.Fields(out)
	if len(f) != 6 || f[0] != "download" || f[2] != "verify" || f[4] != "prepare" {
		return 0, 0, 0, fmt.Errorf("by hand: unexpected output %q", out)
	}
	var v [3]time.Duration
	for i := range v {
		n, err := strconv.ParseInt(f[2*i+1], 10, 64)
		if err != nil || n < 0 {
			return 0, 0, 0, fmt.Errorf("by hand: unexpected output %q", out)
		}
		v[i] = time.Duration(n) * time.Microsecond
	}
	return v[0], v[1], v[2], nil
}

// ParseDu parses `du -sxB1 DIR...` output: bytes per directory, in order.
func ParseDu(out string) ([]int64, error) {
	var vs []int64
	for line := range strings.Lines(out) {
		n, _, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok {
			return nil, fmt.Errorf("du: cannot parse %q", line)
		}
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("du: cannot parse %q", line)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// FormatBytes prints a byte count with a binary unit.
func FormatBytes(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	switch {
	case n >= 10<<30:
		return fmt.Sprintf("%s%.1f GiB", neg, float64(n)/(1<<30))
	case n >= 10<<20:
		return fmt.Sprintf("%s%.0f MiB", neg, float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%s%.1f MiB", neg, float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%s%.0f KiB", neg, float64(n)/(1<<10))
	case n >= 1<<10:
		return fmt.Sprintf("%s%.1f KiB", neg, float64(n)/(1<<10))
	}
	return fmt.Sprintf("%s%d B", neg, n)
}

// FormatDuration prints seconds for a second or more (two decimals),
// milliseconds below.
func FormatDuration(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
