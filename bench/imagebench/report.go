package imagebench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// coldMedians are the medians of a side's cold samples, phase by phase.
type coldMedians struct {
	total, fetch, download, verify, prepare, sync, min, max time.Duration
}

func medians(ss []ColdSample) coldMedians {
	pick := func(f func(ColdSample) time.Duration) time.Duration {
		ds := make([]time.Duration, len(ss))
		for i, s := range ss {
			ds[i] = f(s)
		}
		return Median(ds)
	}
	var m coldMedians
	m.total = pick(func(s ColdSample) time.Duration { return s.Total })
	m.fetch = pick(func(s ColdSample) time.Duration { return s.Fetch })
	m.download = pick(func(s ColdSample) time.Duration { return s.Download })
	m.verify = pick(func(s ColdSample) time.Duration { return s.Verify })
	m.prepare = pick(func(s ColdSample) time.Duration { return s.Prepare })
	m.sync = pick(func(s ColdSample) time.Duration { return s.Sync })
	m.minMax(ss)
	return m
}

// minMax sets min and max of the totals.
func (m *coldMedians) minMax(ss []ColdSample) {
	for i, s := range ss {
		if i == 0 || s.Total < m.min {
			m.min = s.Total
		}
		if s.Total > m.max {
			m.max = s.Total
		}
	}
}

// handPlusSync is the median of by-hand total + the sync after it.
func handPlusSync(ss []ColdSample) time.Duration {
	ds := make([]time.Duration, len(ss))
	for i, s := range ss {
		ds[i] = s.Total + s.Sync
	}
	return Median(ds)
}

// Format writes the report: machine facts, the table, the per-instance
// footprint lines and the spread of the cold runs.
func (r *Report) Format(w io.Writer, command string) {
	c := r.Config
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("## lxc-agent image builds vs by hand\n\n")
	p("- date: %s (run took %s)\n", r.Start.Format("2006-01-02 15:04 MST"), r.Duration.Round(time.Second))
	p("- command: `%s`\n", command)
	p("- machine: nproc %s, %s, kernel %s, work dir on %s\n", r.Machine.Nproc, r.Machine.CPU, r.Machine.Kernel, r.Machine.Disk)
	p("- load average: %s at start, %s at end\n", r.Machine.LoadStart, r.Machine.LoadEnd)
	p("- glance-api: %s\n", r.Glance)
	drop := "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every cold build, both sides"
	if !c.DropCaches {
		drop = "page cache NOT dropped between cold builds (sync only)"
	}
	p("- cold: %d builds per side and image, fresh cache each, sides alternating; %s; medians\n", c.Reps, drop)
	p("- warm: image in the cache; first instance = base made again (%d runs, median; settled like a cold build before each), base mounted = %d instances in a row while another holds the base (page cache warm)\n\n", c.FirstReps, c.Instances)
	p("```\n$ free -m\n%s\n```\n\n", r.Machine.Free)

	p("| image | downloaded | agent cold: fetch+verify + prepare | by hand cold: curl + sha512sum + prepare | hand / agent | by hand + sync | agent warm, first instance | agent warm, base mounted: median / p95 |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, res := range r.Results {
		a, h := medians(res.Agent), medians(res.Hand)
		ratio := "-"
		if a.total > 0 {
			ratio = fmt.Sprintf("%.2f×", h.total.Seconds()/a.total.Seconds())
		}
		p("| %s | %s | %s = %s + %s | %s = %s + %s + %s | %s | %s | %s | %s / %s |\n",
			res.Image.Label(), FormatBytes(res.Image.Bytes),
			FormatDuration(a.total), FormatDuration(a.fetch), FormatDuration(a.prepare),
			FormatDuration(h.total), FormatDuration(h.download), FormatDuration(h.verify), FormatDuration(h.prepare),
			ratio, FormatDuration(handPlusSync(res.Hand)),
			FormatDuration(Median(res.WarmFirst)),
			FormatDuration(Median(res.Warm)), FormatDuration(Percentile(res.Warm, 95)))
	}
	p("\nhand / agent > 1: lxc-agent is faster. Each phase is its own median, so the phases need not add up to the total exactly. \"by hand + sync\": the by-hand build plus the sync(2) that writes back what it left dirty (lxc-agent fsyncs the downloaded image and syncfs's an extracted tree inside its own time; the sync after an agent build took %s median).\n\n",
		FormatDuration(medianSync(r.Results)))

	p("Spread of the cold totals (min .. max):\n\n")
	for _, res := range r.Results {
		a, h := medians(res.Agent), medians(res.Hand)
		p("- %s: agent %s .. %s, by hand %s .. %s\n", res.Image.Label(),
			FormatDuration(a.min), FormatDuration(a.max), FormatDuration(h.min), FormatDuration(h.max))
	}

	p("\nPer instance, after %d warm instances of each image (idle overlays, nothing written; memory, measured on the largest images only, is the host-wide change: see the noise):\n\n", c.Instances)
	for _, res := range r.Results {
		fp := res.Footprint
		n := int64(max(fp.Instances, 1))
		base := "mounted read-only from the cached file (no disk of its own)"
		if !fp.BaseMounted {
			base = FormatBytes(fp.BaseBytes) + " (the extracted tree)"
		}
		maxDisk := int64(0)
		for _, d := range fp.Disk {
			maxDisk = max(maxDisk, d)
		}
		p("- %s: disk %s per instance (du -sx of upper+work, median; max %s); shared once: cache %s, base %s\n",
			res.Image.Label(), FormatBytes(MedianInt64(fp.Disk)), FormatBytes(maxDisk), FormatBytes(fp.CacheBytes), base)
		if fp.MemMeasured {
			p("  memory per instance: kernel %s (slab objects %s, of which ovl_inode %s; Percpu %s; Slab pages %s); MemAvailable %s (noise ±%s per instance)\n",
				signed((fp.SlabObjectsGrowth+fp.PercpuGrowth)/n), signed(fp.SlabObjectsGrowth/n), signed(fp.OvlInodeGrowth/n),
				signed(fp.PercpuGrowth/n), signed(fp.SlabGrowth/n), signed(-fp.MemAvailableDrop/n), FormatBytes(fp.IdleNoise/n))
		}
		if fp.ExportRSS > 0 {
			p("  shared once: the qemu-storage-daemon FUSE export, %s resident\n", FormatBytes(fp.ExportRSS))
		}
		if len(fp.CopyTimes) > 0 {
			p("  full copy per instance instead (%s): %s on disk and %s each (cp + sync, median of %d)\n",
				fp.CopyWhat, FormatBytes(MedianInt64(fp.CopyDisk)), FormatDuration(Median(fp.CopyTimes)), len(fp.CopyTimes))
		}
	}
}

func medianSync(rs []*Result) time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		for _, s := range r.Agent {
			ds = append(ds, s.Sync)
		}
	}
	return Median(ds)
}

func signed(v int64) string {
	if v >= 0 {
		return "+" + FormatBytes(v)
	}
	return FormatBytes(v)
}

// Command renders argv as a shell command line (single quotes where
// needed).
func Command(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:+") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
