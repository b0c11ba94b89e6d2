package imagebench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The measurement itself needs root, glance-api and minutes: it runs from
// bench/image-build.sh (cmd/imagebench), not from go test. These tests cover
// the parts that decide the numbers: statistics, parsers, the report.

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestMedianPercentile(t *testing.T) {
	for _, c := range []struct {
		in       []time.Duration
		med, p95 time.Duration
	}{
		{nil, 0, 0},
		{ms(7), 7 * time.Millisecond, 7 * time.Millisecond},
		{ms(3, 1, 2), 2 * time.Millisecond, 3 * time.Millisecond},
		{ms(4, 1, 3, 2), 2500 * time.Microsecond, 4 * time.Millisecond},
	} {
		if got := Median(c.in); got != c.med {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.med)
		}
		if got := Percentile(c.in, 95); got != c.p95 {
			t.Errorf("Percentile(%v, 95) = %v, want %v", c.in, got, c.p95)
		}
	}
	// Nearest rank over 1..50 ms: p95 is the 48th value, p50 the 25th.
	var s []time.Duration
	for i := 50; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	if got := Percentile(s, 95); got != 48*time.Millisecond {
		t.Errorf("p95 of 1..50 ms = %v, want 48ms", got)
	}
	if got := Percentile(s, 50); got != 25*time.Millisecond {
		t.Errorf("p50 of 1..50 ms = %v, want 25ms", got)
	}
	if got := Percentile(s, 100); got != 50*time.Millisecond {
		t.Errorf("p100 of 1..50 ms = %v, want 50ms", got)
	}
	if got := MedianInt64([]int64{5, 1, 3, 100}); got != 4 {
		t.Errorf("MedianInt64 = %d, want 4", got)
	}
}

func TestParseMeminfo(t *testing.T) {
	in := "MemTotal:       24683620 kB\nMemFree:        24465520 kB\nMemAvailable:   24388572 kB\n" +
		"Slab:              34260 kB\nSReclaimable:       7824 kB\nPercpu:             1536 kB\nHugePages_Total:       0\n"
	m, err := ParseMeminfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m.MemAvailable != 24388572<<10 || m.Slab != 34260<<10 || m.Percpu != 1536<<10 {
		t.Errorf("got %+v", m)
	}
	if _, err := ParseMeminfo(strings.NewReader("MemTotal: 1 kB\n")); err == nil {
		t.Error("no error for a meminfo without MemAvailable")
	}
	if _, err := ParseMeminfo(strings.NewReader("MemAvailable: x kB\nSlab: 1 kB\nPercpu: 1 kB\n")); err == nil {
		t.Error("no error for a bad number")
	}
}

func TestParseSlabinfo(t *testing.T) {
	in := `slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
ovl_inode            184    276    704   23    4 : tunables    0    0    0 : slabdata     12     12      0
dentry             1000   1200    192   21    1 : tunables    0    0    0 : slabdata     50     50      0
`
	c, err := ParseSlabinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if c["ovl_inode"] != 184*704 || c["dentry"] != 1000*192 || len(c) != 2 {
		t.Errorf("got %v", c)
	}
	if _, err := ParseSlabinfo(strings.NewReader("ovl_inode x 1 2\n")); err == nil {
		t.Error("no error for a bad line")
	}
}

func TestParseByHand(t *testing.T) {
	dl, ver, prep, err := ParseByHand("download 1500000 verify 250 prepare 42\n")
	if err != nil {
		t.Fatal(err)
	}
	if dl != 1500*time.Millisecond || ver != 250*time.Microsecond || prep != 42*time.Microsecond {
		t.Errorf("got %v %v %v", dl, ver, prep)
	}
	for _, bad := range []string{"", "download 1 verify 2", "download 1 verify 2 prepare -3", "download a verify 2 prepare 3"} {
		if _, _, _, err := ParseByHand(bad); err == nil {
			t.Errorf("ParseByHand(%q): no error", bad)
		}
	}
}

func TestParseDu(t *testing.T) {
	v, err := ParseDu("20480\t/a/i000\n16384\t/a/i001\n")
	if err != nil || len(v) != 2 || v[0] != 20480 || v[1] != 16384 {
		t.Fatalf("got %v, %v", v, err)
	}
	if _, err := ParseDu("20K /a\n"); err == nil {
		t.Error("no error for human-readable output")
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {20480, "20 KiB"}, {1536, "1.5 KiB"}, {352 << 20, "352 MiB"}, {-2048, "-2.0 KiB"}} {
		if got := FormatBytes(c.n); got != c.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{1500 * time.Millisecond, "1.50 s"}, {488 * time.Millisecond, "488 ms"}, {1040 * time.Microsecond, "1.0 ms"}} {
		if got := FormatDuration(c.d); got != c.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	if got := Command([]string{"bench/image-build.sh", "-x", "a b", "it's"}); got != `bench/image-build.sh -x 'a b' 'it'\''s'` {
		t.Errorf("Command = %s", got)
	}
}

func TestReport(t *testing.T) {
	im := &Image{Name: "raw-64", Format: "raw", PayloadMiB: 64, Bytes: 112 << 20}
	r := &Report{Config: DefaultConfig(), Start: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Results: []*Result{{
		Image: im,
		Agent: []ColdSample{{Total: 500 * time.Millisecond, Fetch: 490 * time.Millisecond, Prepare: 10 * time.Millisecond}},
		Hand: []ColdSample{{Total: time.Second, Download: 400 * time.Millisecond, Verify: 300 * time.Millisecond,
			Prepare: 300 * time.Millisecond, Sync: 100 * time.Millisecond}},
		WarmFirst: ms(9),
		Warm:      ms(1, 1, 2),
		Footprint: Footprint{Instances: 2, Disk: []int64{20480, 20480}, CacheBytes: 112 << 20, BaseMounted: true,
			MemMeasured: true, SlabObjectsGrowth: 40 << 10, MemAvailableDrop: 100 << 10, IdleNoise: 10 << 10},
	}}}
	var buf bytes.Buffer
	r.Format(&buf, "bench/image-build.sh")
	out := buf.String()
	for _, want := range []string{
		"| raw 64 MiB | 112 MiB | 500 ms = 490 ms + 10 ms | 1.00 s = 400 ms + 300 ms + 300 ms | 2.00× | 1.10 s | 9.0 ms | 1.0 ms / 2.0 ms |",
		"disk 20 KiB per instance",
		"kernel +20 KiB",
		"MemAvailable -50 KiB (noise ±5.0 KiB per instance)",
		"command: `bench/image-build.sh`",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestBuildTree checks the payload: size, determinism, the marker.
func TestBuildTree(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	a, b := t.TempDir(), t.TempDir()
	sa, err := buildTree(a, 2, 7)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := buildTree(b, 2, 7)
	if err != nil {
		t.Fatal(err)
	}
	if sa != sb || sa.bytes != 2<<20 || sa.files < 10 {
		t.Errorf("trees: %+v and %+v, want 2 MiB of payload in both", sa, sb)
	}
	x, _ := os.ReadFile(filepath.Join(a, "usr/share/imagebench/000/file00000"))
	y, _ := os.ReadFile(filepath.Join(b, "usr/share/imagebench/000/file00000"))
	if len(x) == 0 || !bytes.Equal(x, y) {
		t.Error("same seed, different payload")
	}
	if _, err := os.Stat(filepath.Join(a, MarkerPath)); err != nil {
		t.Error(err)
	}
}

// TestByHandScript checks the embedded script's syntax and usage errors
// (no root needed: it fails before doing anything).
func TestByHandScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	p := filepath.Join(t.TempDir(), "byhand.sh")
	if err := os.WriteFile(p, byHandScript, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", p).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v: %s", err, out)
	}
	cmd := exec.CommandContext(context.Background(), "bash", p, "build", "raw")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage:") {
		t.Errorf("byhand.sh build raw: %v: %s (want usage, exit 2)", err, out)
	}
}
