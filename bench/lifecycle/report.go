package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/lxc-agent/lxc-agent/bench/imagebench"
)

// Summary is median, p90 (nearest rank), min and max of samples.
type Summary struct {
	N                     int
	Median, P90, Min, Max time.Duration
}

// Summarize summarizes ds.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	return Summary{N: len(ds), Median: imagebench.Median(ds), P90: imagebench.Percentile(ds, 90),
		Min: slices.Min(ds), Max: slices.Max(ds)}
}

// mib prints a byte count in MiB (KiB below 1 MiB).
func mib(n int64) string {
	if n > -(1<<20) && n < 1<<20 {
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// medianOf is the median of f over the containers, with min and max.
func medianOf(cms []ContainerMem, f func(ContainerMem) int64) (med, lo, hi int64) {
	if len(cms) == 0 {
		return 0, 0, 0
	}
	vs := make([]int64, len(cms))
	for i, cm := range cms {
		vs[i] = f(cm)
	}
	return imagebench.MedianInt64(vs), slices.Min(vs), slices.Max(vs)
}

func spread(cms []ContainerMem, f func(ContainerMem) int64) string {
	med, lo, hi := medianOf(cms, f)
	if lo == hi {
		return mib(med)
	}
	return fmt.Sprintf("%s (%s–%s)", mib(med), mib(lo), mib(hi))
}

// monitorName is the monitor process as the table shows it.
func monitorName(cms []ContainerMem) string {
	if len(cms) == 0 {
		return "?"
	}
	m := cms[0].Monitor
	switch {
	case strings.HasPrefix(m, "[lxc monitor]"):
		return "`[lxc monitor]`"
	case strings.Contains(m, "libvirt_lxc"):
		return "`libvirt_lxc`"
	}
	if f := strings.Fields(m); len(f) > 0 {
		return "`" + f[0] + "`"
	}
	return "?"
}

// cgroupShape prints a cgroup path with the container's id or name
// replaced by <id>.
func cgroupShape(p string, keys []string) string {
	if p == "" {
		return ""
	}
	return "`" + shapeCmd(p, keys) + "`"
}

// privateEstimate is what one more idle container costs the host at
// least: the private memory of its processes and of its monitor, plus the
// kernel memory charged to its cgroups.
func privateEstimate(c ContainerMem) int64 {
	return c.ProcUSS + c.MonUSS + max(c.CgroupKmem, 0) + max(c.MonCgroupKmem, 0)
}

// gib prints a whole-host figure in GiB with MiB precision.
func gib(n int64) string { return fmt.Sprintf("%.3f GiB", float64(n)/(1<<30)) }

// Format writes the report as Markdown.
func (r *Report) Format(w io.Writer, command string) {
	fmt.Fprintf(w, "## Container lifecycle and idle memory per backend\n\n")
	fmt.Fprintf(w, "Command: `%s`", command)
	if r.Took > 0 {
		fmt.Fprintf(w, " (took %.0f s)", r.Took.Seconds())
	}
	fmt.Fprintf(w, "\n\n")
	m := r.Machine
	fmt.Fprintf(w, "Machine: %s vCPU (%s), MemTotal %s, kernel %s, %s cgroups; %s. Load average %s at the start, %s at the end.\n\n",
		m.Nproc, m.CPU, m.MemTotal, m.Kernel, m.Cgroups, m.Packages, m.LoadStart, m.LoadEnd)
	var names []string
	for _, res := range r.Results {
		if res.Helper != "" {
			names = append(names, fmt.Sprintf("%s (%s; containers started by %s, whose fork is the monitor)", res.Backend, res.Version, res.Helper))
		} else {
			names = append(names, fmt.Sprintf("%s (%s)", res.Backend, res.Version))
		}
	}
	memN := ""
	if r.MemN > r.N {
		memN = fmt.Sprintf(" (%d in the memory phase)", r.MemN)
	}
	fmt.Fprintf(w, "Backends: %s. N = %d busybox containers per backend%s (busybox init + one `sleep`, no NIC), each on its own overlay of one busybox tree; every operation through `driver.Driver`, one container at a time. Clean stops have a %v grace.\n\n",
		strings.Join(names, ", "), r.N, memN, r.Grace)

	// Latency.
	fmt.Fprintf(w, "### Latency (median, p90, min–max over %d containers)\n\n", r.N)
	fmt.Fprintf(w, "| operation |")
	for _, res := range r.Results {
		fmt.Fprintf(w, " %s median | p90 | min–max |", res.Backend)
	}
	if len(r.Results) == 2 {
		fmt.Fprintf(w, " %s / %s |", r.Results[1].Backend, r.Results[0].Backend)
	}
	fmt.Fprintf(w, "\n|---|")
	for range r.Results {
		fmt.Fprintf(w, "---:|---:|---:|")
	}
	if len(r.Results) == 2 {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, op := range Ops {
		fmt.Fprintf(w, "| %s |", op)
		var meds []time.Duration
		for _, res := range r.Results {
			s := Summarize(res.Samples[op])
			meds = append(meds, s.Median)
			if s.N == 0 {
				fmt.Fprintf(w, " – | – | – |")
				continue
			}
			fmt.Fprintf(w, " %s | %s | %s–%s |", imagebench.FormatDuration(s.Median), imagebench.FormatDuration(s.P90),
				imagebench.FormatDuration(s.Min), imagebench.FormatDuration(s.Max))
		}
		if len(meds) == 2 {
			if meds[0] > 0 {
				fmt.Fprintf(w, " %.2f× |", float64(meds[1])/float64(meds[0]))
			} else {
				fmt.Fprintf(w, " – |")
			}
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	for _, res := range r.Results {
		fmt.Fprintf(w, "- %s: init printed its shutdown line after %d of %d clean stops (stop, clean and the soft reboots).\n",
			res.Backend, res.CleanHalts, res.CleanStops)
	}
	fmt.Fprintln(w)

	// Memory.
	settle := time.Duration(0)
	if len(r.Results) > 0 {
		settle = r.Results[0].Settle
	}
	fmt.Fprintf(w, "### Memory per idle container (%d running, idle for %v; median (min–max) over the containers)\n\n", r.MemN, settle)
	fmt.Fprintf(w, "| per container |")
	for _, res := range r.Results {
		fmt.Fprintf(w, " %s |", res.Backend)
	}
	fmt.Fprintf(w, "\n|---|")
	for range r.Results {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintln(w)
	row := func(label string, f func(res *Result) string) {
		fmt.Fprintf(w, "| %s |", label)
		for _, res := range r.Results {
			fmt.Fprintf(w, " %s |", f(res))
		}
		fmt.Fprintln(w)
	}
	n := int64(max(r.MemN, 1))
	row("**host MemAvailable drop / N** (± noise / N)", func(res *Result) string {
		i := BestCycle(res.Cycles)
		if i < 0 {
			return "–"
		}
		c := res.Cycles[i]
		out := fmt.Sprintf("**%s** (± %s)", mib(c.Drop()/n), mib(c.Noise()/n))
		if !c.Acceptable() {
			out += " — noisy: the two stopped readings differ by more than a fifth of the drop"
		}
		return out
	})
	row("MemAvailable, whole host: stopped → running → stopped (cycles)", func(res *Result) string {
		if len(res.Cycles) == 0 {
			return "–"
		}
		parts := []string{gib(res.Cycles[0].Before.MemAvailable)}
		for _, c := range res.Cycles {
			parts = append(parts, gib(c.Loaded.MemAvailable), gib(c.After.MemAvailable))
		}
		s := strings.Join(parts, " → ")
		if len(res.Cycles) > 1 {
			s += fmt.Sprintf(" (%d cycles; the drop is from cycle %d)", len(res.Cycles), BestCycle(res.Cycles)+1)
		}
		return s
	})
	row("of the drop: kernel Slab + Percpu / N", func(res *Result) string {
		i := BestCycle(res.Cycles)
		if i < 0 {
			return "–"
		}
		c := res.Cycles[i]
		base := (c.Before.Slab + c.Before.Percpu + c.After.Slab + c.After.Percpu) / 2
		return mib((c.Loaded.Slab + c.Loaded.Percpu - base) / n)
	})
	row("container processes", func(res *Result) string {
		med, lo, hi := medianOf(res.Containers, func(c ContainerMem) int64 { return int64(c.Procs) })
		if lo == hi {
			return fmt.Sprint(med)
		}
		return fmt.Sprintf("%d (%d–%d)", med, lo, hi)
	})
	triple := func(cms []ContainerMem, f func(ContainerMem) [3]int64) string {
		var out [3]string
		for i := range out {
			med, _, _ := medianOf(cms, func(c ContainerMem) int64 { return f(c)[i] })
			out[i] = mib(med)
		}
		return strings.Join(out[:], " / ")
	}
	row("container processes: RSS / PSS / USS", func(res *Result) string {
		return triple(res.Containers, func(c ContainerMem) [3]int64 { return [3]int64{c.ProcRSS, c.ProcPSS, c.ProcUSS} })
	})
	row("monitor process", func(res *Result) string { return monitorName(res.Containers) })
	row("monitor: RSS / PSS / USS", func(res *Result) string {
		return triple(res.Containers, func(c ContainerMem) [3]int64 { return [3]int64{c.MonRSS, c.MonPSS, c.MonUSS} })
	})
	row("**container + monitor RSS**", func(res *Result) string {
		return "**" + spread(res.Containers, func(c ContainerMem) int64 { return c.ProcRSS + c.MonRSS }) + "**"
	})
	row("**container + monitor PSS**", func(res *Result) string {
		return "**" + spread(res.Containers, func(c ContainerMem) int64 { return c.ProcPSS + c.MonPSS }) + "**"
	})
	row("**container + monitor USS** (private)", func(res *Result) string {
		return "**" + spread(res.Containers, func(c ContainerMem) int64 { return c.ProcUSS + c.MonUSS }) + "**"
	})
	cgroupRow := func(usage, kmem int64) string {
		if kmem < 0 {
			return mib(usage)
		}
		return fmt.Sprintf("%s (kernel %s)", mib(usage), mib(kmem))
	}
	row("memory cgroup of init: usage (of which kernel)", func(res *Result) string {
		u, _, _ := medianOf(res.Containers, func(c ContainerMem) int64 { return c.CgroupUsage })
		k, _, _ := medianOf(res.Containers, func(c ContainerMem) int64 { return c.CgroupKmem })
		return cgroupRow(u, k)
	})
	row("memory cgroup of the monitor: usage (of which kernel)", func(res *Result) string {
		if len(res.Containers) == 0 || res.Containers[0].MonCgroup == "" {
			return "(the monitor is in init's cgroup)"
		}
		u, _, _ := medianOf(res.Containers, func(c ContainerMem) int64 { return c.MonCgroupUsage })
		k, _, _ := medianOf(res.Containers, func(c ContainerMem) int64 { return c.MonCgroupKmem })
		return cgroupRow(u, k)
	})
	row("**private estimate: USS + kernel memory of the cgroups**", func(res *Result) string {
		return "**" + spread(res.Containers, privateEstimate) + "**"
	})
	row("other processes of the container (forklxc, attach)", func(res *Result) string {
		med, lo, hi := medianOf(res.Containers, func(c ContainerMem) int64 { return int64(len(c.Extra)) })
		if lo == hi {
			return fmt.Sprint(med)
		}
		return fmt.Sprintf("%d (%d–%d)", med, lo, hi)
	})
	row("shared daemons: RSS / USS, stopped → running (Δ RSS / N)", func(res *Result) string {
		if res.Daemons == "" {
			return "none (liblxc runs in the agent)"
		}
		return fmt.Sprintf("%s: %s / %s → %s / %s (%s)", res.Daemons, mib(res.DaemonsBefore.Rss), mib(res.DaemonsBefore.Uss),
			mib(res.DaemonsLoaded.Rss), mib(res.DaemonsLoaded.Uss), mib((res.DaemonsLoaded.Rss-res.DaemonsBefore.Rss)/n))
	})
	fmt.Fprintln(w)
	for _, res := range r.Results {
		if len(res.Containers) == 0 {
			continue
		}
		c := res.Containers[0]
		var ids []string
		for _, cm := range res.Containers {
			ids = append(ids, cm.Keys...)
		}
		fmt.Fprintf(w, "- %s: memory cgroup of init %s", res.Backend, cgroupShape(c.Cgroup, ids))
		if c.MonCgroup != "" {
			fmt.Fprintf(w, ", of the monitor %s", cgroupShape(c.MonCgroup, ids))
		}
		fmt.Fprintf(w, "; monitor command line `%s`.\n", shapeCmd(c.Monitor, ids))
		for _, cm := range res.Containers {
			for _, e := range cm.Extra {
				fmt.Fprintf(w, "  - extra process: `%s`\n", e)
			}
		}
		for _, o := range res.Others {
			fmt.Fprintf(w, "  - other process naming the backend's directory: `%s`\n", o)
		}
	}
}

// shapeCmd replaces the containers' ids and names (keys: id, name, id,
// name, ...) in c by <id> and <name>.
func shapeCmd(c string, keys []string) string {
	for i, k := range keys {
		if k == "" {
			continue
		}
		if i%2 == 0 {
			c = strings.ReplaceAll(c, k, "<id>")
		} else {
			c = strings.ReplaceAll(c, k, "<name>")
		}
	}
	return c
}
