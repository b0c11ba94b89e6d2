// Package imagebench measures lxc-agent's image builds side by side with the
// same work done by hand, for bench/image-build.sh (docs/benchmarks-images.md).
//
// Run starts a private glance-api on 127.0.0.1 (testenv.StartGlance),
// builds busybox root filesystems padded with incompressible files, turns
// each into four images (raw ext4, qcow2, gzip and zstd root tarballs),
// uploads them, and then for every image:
//
//   - cold builds, each with a fresh image cache and, by default, the page
//     cache dropped first (sync; echo 3 > /proc/sys/vm/drop_caches) on both
//     sides: lxc-agent's rootfs.Cache.Fetch (download from Glance with the
//     sha512 verified while streaming, fsync) then Mounter.Prepare (the
//     read-only base and the instance's overlay) until a file of the rootfs
//     is read; against byhand.sh, which does the same with curl, jq,
//     sha512sum, mount -o loop / qemu-img convert / tar and mount -t overlay.
//     The two sides alternate, starting side swapped every repetition, and
//     are timed with the same clock (this process's monotonic clock around
//     the Go calls and around the bash process).
//   - warm builds: the image cached; "first instance" makes the base again
//     (for tarballs: extracts the cached tarball again), after the same
//     sync and cache drop as a cold build; "base mounted" is one instance
//     after another while another instance holds the base.
//   - the footprint of the warm instances: du -sx of each instance
//     directory, the shared cache file and base; on the largest images the
//     drop of MemAvailable and the growth of slab objects (ovl_inode too),
//     Percpu and Slab per instance; and a full copy per instance (cp + sync, as nova's Flat image backend
//     or LXD's dir storage driver do) for comparison.
//
// Everything is created under Config.WorkDir and released before Run
// returns, on failure and cancellation too; bench/image-build.sh sweeps the
// work directory once more after the process exits.
package imagebench

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lxc-agent/lxc-agent/internal/testenv"
	"github.com/lxc-agent/lxc-agent/pkg/rootfs"
)

//go:embed byhand.sh
var byHandScript []byte

// Config says what to measure. Empty SizesMiB and Formats and a zero
// FirstReps take DefaultConfig's values; Reps and Instances must be set.
type Config struct {
	WorkDir    string   // everything goes here (must exist, on a disk, not tmpfs)
	SizesMiB   []int    // payload sizes
	Formats    []string // subset of Formats
	Reps       int      // cold builds per side and image
	FirstReps  int      // warm builds that make the base again (first instance)
	Instances  int      // warm instances per image (base mounted)
	Copies     int      // full copies per image for the comparison
	DropCaches bool     // drop the page cache before every cold and first-instance build
	Seed       uint64
	Progress   io.Writer // progress lines (nil: discarded)
}

// DefaultConfig is what bench/image-build.sh runs without settings.
func DefaultConfig() Config {
	return Config{SizesMiB: []int{64, 256}, Formats: Formats, Reps: 5, FirstReps: 3, Instances: 50, Copies: 3,
		DropCaches: true, Seed: 1}
}

// ColdSample is one cold build.
type ColdSample struct {
	Total time.Duration `json:"total_ns"`
	// Fetch is the agent's Cache.Fetch (download + verify + fsync); by
	// hand it is Download + Verify.
	Fetch    time.Duration `json:"fetch_ns"`
	Download time.Duration `json:"download_ns,omitempty"` // by hand: curl (metadata and data)
	Verify   time.Duration `json:"verify_ns,omitempty"`   // by hand: sha512sum
	Prepare  time.Duration `json:"prepare_ns"`            // base + overlay + reading a file
	// Sync is how long a sync(2) right after the build took: the
	// writeback the build left for later.
	Sync time.Duration `json:"sync_ns"`
}

// Footprint is what warm instances cost.
type Footprint struct {
	Instances int     `json:"instances"`
	Disk      []int64 `json:"disk_bytes"` // du -sxB1 of each instance directory
	// CacheBytes is du of the cache directory (image + metadata), BaseBytes
	// du of the base when it is a directory (an extracted tarball); a
	// mounted base costs no disk of its own.
	CacheBytes  int64 `json:"cache_bytes"`
	BaseBytes   int64 `json:"base_bytes"`
	BaseMounted bool  `json:"base_mounted"`
	// ExportRSS is the resident memory of the qcow2 image's
	// qemu-storage-daemon (one per image, shared by its instances).
	ExportRSS int64 `json:"export_rss,omitempty"`
	// MemMeasured: the memory fields are set (largest size only).
	MemMeasured bool `json:"mem_measured"`
	// Memory deltas over all Instances (bytes), and how much MemAvailable
	// moved among the snapshots of an idle host taken before and after
	// (the noise).
	MemAvailableDrop int64 `json:"mem_available_drop"`
	SlabGrowth       int64 `json:"slab_growth"`
	PercpuGrowth     int64 `json:"percpu_growth"`
	// SlabObjectsGrowth counts slab objects (see Meminfo.SlabObjects);
	// SlabGrowth whole slab pages.
	SlabObjectsGrowth int64 `json:"slab_objects_growth"`
	OvlInodeGrowth    int64 `json:"ovl_inode_growth"`
	IdleNoise         int64 `json:"idle_noise"`
	// Full copies: what each costs on disk and in time (cp + sync).
	CopyWhat  string          `json:"copy_what"`
	CopyDisk  []int64         `json:"copy_bytes"`
	CopyTimes []time.Duration `json:"copy_ns"`
}

// Result is everything measured for one image.
type Result struct {
	Image     *Image          `json:"image"`
	Agent     []ColdSample    `json:"agent_cold"`
	Hand      []ColdSample    `json:"by_hand_cold"`
	WarmFirst []time.Duration `json:"warm_first_ns"`
	Warm      []time.Duration `json:"warm_ns"`
	Footprint Footprint       `json:"footprint"`
}

// Machine describes the host.
type Machine struct {
	Nproc     string `json:"nproc"`
	CPU       string `json:"cpu"`
	Free      string `json:"free_m"`
	Kernel    string `json:"kernel"`
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
	Disk      string `json:"disk"` // the work directory's filesystem
}

// Report is the outcome of Run.
type Report struct {
	Config   Config        `json:"-"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration_ns"`
	Machine  Machine       `json:"machine"`
	Glance   string        `json:"glance"`
	Results  []*Result     `json:"results"`
}

type bench struct {
	cfg      Config
	work     string
	agentDir string // instances, caches
	handDir  string
	baseDir  string // the Mounter's
	script   string
	glance   *testenv.GlanceServer
	m        *rootfs.Mounter
	progress io.Writer
}

// cleanupTimeout bounds each release done while cleaning up.
const cleanupTimeout = 2 * time.Minute

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "[imagebench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Run measures; see the package documentation.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	def := DefaultConfig()
	if len(cfg.SizesMiB) == 0 {
		cfg.SizesMiB = def.SizesMiB
	}
	if len(cfg.Formats) == 0 {
		cfg.Formats = def.Formats
	}
	for _, f := range cfg.Formats {
		if !containsStr(Formats, f) {
			return nil, fmt.Errorf("unknown format %q (want %s)", f, strings.Join(Formats, ", "))
		}
	}
	for _, s := range cfg.SizesMiB {
		if s <= 0 {
			return nil, fmt.Errorf("payload size %d MiB", s)
		}
	}
	if cfg.FirstReps == 0 {
		cfg.FirstReps = def.FirstReps
	}
	if cfg.Reps <= 0 || cfg.FirstReps < 0 || cfg.Instances <= 0 || cfg.Copies < 0 {
		return nil, fmt.Errorf("reps %d, first-instance reps %d, instances %d, copies %d: want positive counts",
			cfg.Reps, cfg.FirstReps, cfg.Instances, cfg.Copies)
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if err := checkHost(); err != nil {
		return nil, err
	}
	work, err := filepath.Abs(cfg.WorkDir)
	if err == nil {
		work, err = filepath.EvalSymlinks(work)
	}
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	b := &bench{cfg: cfg, work: work, progress: cfg.Progress,
		agentDir: filepath.Join(work, "agent"), handDir: filepath.Join(work, "hand"),
		baseDir: filepath.Join(work, "agent", "mnt"), script: filepath.Join(work, "byhand.sh")}
	toolHome = filepath.Join(work, "home")
	for _, d := range []string{b.agentDir, b.handDir, toolHome, filepath.Join(work, "src")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(b.script, byHandScript, 0o755); err != nil {
		return nil, err
	}
	b.m = rootfs.NewMounter(b.baseDir, nil)
	defer func() { err = errors.Join(err, b.sweep()) }()

	rep = &Report{Config: cfg, Start: time.Now()}
	rep.Machine = machine(work)

	b.logf("starting glance-api on 127.0.0.1")
	g, err := testenv.StartGlance(ctx, filepath.Join(work, "glance"))
	if err != nil {
		return nil, fmt.Errorf("start glance: %w", err)
	}
	b.glance = g
	// For bench/image-build.sh's last-resort cleanup.
	_ = os.WriteFile(filepath.Join(work, "glance.pid"), []byte(strconv.Itoa(g.Pid())+"\n"), 0o644)
	defer func() {
		if serr := g.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop glance: %w", serr))
		}
		os.Remove(filepath.Join(work, "glance.pid"))
	}()
	rep.Glance = fmt.Sprintf("%s (pid %d, started in %.1f s)", g.URL(), g.Pid(), g.Startup.Seconds())

	var images []*Image
	for _, size := range cfg.SizesMiB {
		ims, err := b.makeImages(ctx, size)
		if err != nil {
			return nil, err
		}
		images = append(images, ims...)
	}

	// One untimed round on the smallest qcow2 image (else the first) so
	// that neither side pays first-use costs in the table: glance's lazy
	// imports, the nbd module probe, code paths, binaries.
	wu := images[0]
	for _, im := range images {
		if im.Format == "qcow2" {
			wu = im
			break
		}
	}
	b.logf("warm-up round: %s", wu.Label())
	if _, err := b.agentCold(ctx, wu); err != nil {
		return nil, err
	}
	if _, err := b.handCold(ctx, wu, 0); err != nil {
		return nil, err
	}

	for _, im := range images {
		r := &Result{Image: im}
		rep.Results = append(rep.Results, r)
		for i := range cfg.Reps {
			b.logf("cold %s: run %d/%d", im.Label(), i+1, cfg.Reps)
			agentFirst := i%2 == 0
			for side := range 2 {
				if (side == 0) == agentFirst {
					s, err := b.agentCold(ctx, im)
					if err != nil {
						return nil, err
					}
					r.Agent = append(r.Agent, s)
				} else {
					s, err := b.handCold(ctx, im, i+1)
					if err != nil {
						return nil, err
					}
					r.Hand = append(r.Hand, s)
				}
			}
		}
		b.logf("warm %s: %d first instances, %d instances on a mounted base", im.Label(), cfg.FirstReps, cfg.Instances)
		if err := b.warm(ctx, im, r); err != nil {
			return nil, err
		}
	}
	rep.Machine.LoadEnd = loadavg()
	rep.Duration = time.Since(rep.Start)
	return rep, nil
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// checkHost fails early, with what is missing.
func checkHost() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (loop devices, mount, drop_caches)")
	}
	var missing []string
	for _, p := range []string{"/dev/loop-control", "/dev/fuse", testenv.BusyboxBin, "/usr/bin/glance-api"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	for _, t := range []string{"bash", "curl", "jq", "sha512sum", "qemu-img", "qemu-storage-daemon", "tar", "gzip",
		"zstd", "mkfs.ext4", "mount", "umount", "mountpoint", "du", "cp", "free", "nproc"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s (hack/install-deps.sh test installs them)", strings.Join(missing, ", "))
	}
	return nil
}

// makeImages builds the tree of one payload size, its images, and uploads
// them; the local copies are deleted after the upload.
func (b *bench) makeImages(ctx context.Context, size int) ([]*Image, error) {
	src := filepath.Join(b.work, "src")
	tree := filepath.Join(src, fmt.Sprintf("tree-%d", size))
	b.logf("building a %d MiB tree and its images", size)
	st, err := buildTree(tree, size, b.cfg.Seed)
	if err != nil {
		return nil, fmt.Errorf("build tree: %w", err)
	}
	var ims []*Image
	all, err := buildImages(ctx, tree, src, size, st)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(tree); err != nil {
		return nil, err
	}
	for _, im := range all {
		if containsStr(b.cfg.Formats, im.Format) {
			b.logf("uploading %s (%s)", im.Label(), FormatBytes(im.Bytes))
			if err := upload(ctx, b.glance, im); err != nil {
				return nil, err
			}
			ims = append(ims, im)
		}
		if err := os.Remove(im.Path); err != nil {
			return nil, err
		}
	}
	return ims, nil
}

// settle writes back dirty data and, if configured, drops the page cache,
// dentries and inodes, so that a cold build starts from the disk.
func (b *bench) settle() error {
	unix.Sync()
	if !b.cfg.DropCaches {
		return nil
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

func timeSync() time.Duration {
	t := time.Now()
	unix.Sync()
	return time.Since(t)
}

// source is a GlanceSource with its own connections, as a new build has.
func (b *bench) source() (rootfs.GlanceSource, *http.Transport) {
	tr := &http.Transport{}
	return rootfs.GlanceSource{Endpoint: b.glance.URL(), Client: &http.Client{Transport: tr}}, tr
}

// readMarker reads MarkerPath in a prepared root filesystem.
func readMarker(rootfsDir string) error {
	b, err := os.ReadFile(filepath.Join(rootfsDir, MarkerPath))
	if err == nil && len(b) == 0 {
		err = fmt.Errorf("%s is empty", MarkerPath)
	}
	return err
}

// cleanupCtx is a context for releasing things that must be released even
// when ctx was cancelled.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// agentCold is one cold build by lxc-agent's rootfs package, with a fresh
// cache directory, released afterwards (base included).
func (b *bench) agentCold(ctx context.Context, im *Image) (s ColdSample, err error) {
	dir, err := os.MkdirTemp(b.agentDir, im.Name+"-cold-")
	if err != nil {
		return s, err
	}
	inst := filepath.Join(dir, "instance")
	src, tr := b.source()
	defer tr.CloseIdleConnections()
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		err = errors.Join(err, b.m.Release(cctx, inst), b.m.RemoveBase(cctx, im.ID), os.RemoveAll(dir))
	}()
	cache, err := rootfs.NewCache(filepath.Join(dir, "cache"), src, nil)
	if err != nil {
		return s, err
	}
	if err := b.settle(); err != nil {
		return s, err
	}
	t0 := time.Now()
	path, meta, hit, err := cache.Fetch(ctx, im.ID, "")
	if err != nil {
		return s, err
	}
	t1 := time.Now()
	if hit {
		return s, fmt.Errorf("agent cold build of %s: the fresh cache had the image", im.Name)
	}
	rfs, err := b.m.Prepare(ctx, meta, path, inst)
	if err == nil {
		err = readMarker(rfs)
	}
	if err != nil {
		return s, err
	}
	t2 := time.Now()
	s = ColdSample{Total: t2.Sub(t0), Fetch: t1.Sub(t0), Prepare: t2.Sub(t1), Sync: timeSync()}
	return s, nil
}

// byHand runs byhand.sh in its own process group (killed as a whole on
// cancellation) and returns its stdout.
func (b *bench) byHand(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{b.script}, args...)...)
	cmd.Env = toolEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("byhand.sh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// handCold is one cold build by hand (byhand.sh), released afterwards.
func (b *bench) handCold(ctx context.Context, im *Image, n int) (s ColdSample, err error) {
	dir := filepath.Join(b.handDir, fmt.Sprintf("%s-%d", im.Name, n))
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if _, rerr := b.byHand(cctx, "release", dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	if err := b.settle(); err != nil {
		return s, err
	}
	t0 := time.Now()
	out, err := b.byHand(ctx, "build", im.Format, b.glance.URL(), im.ID, dir)
	total := time.Since(t0)
	if err != nil {
		return s, err
	}
	dl, ver, prep, err := ParseByHand(out)
	if err != nil {
		return s, err
	}
	return ColdSample{Total: total, Fetch: dl + ver, Download: dl, Verify: ver, Prepare: prep, Sync: timeSync()}, nil
}

// warm measures builds from the cache, then the footprint of the
// instances, then full copies.
func (b *bench) warm(ctx context.Context, im *Image, r *Result) (err error) {
	dir, err := os.MkdirTemp(b.agentDir, im.Name+"-warm-")
	if err != nil {
		return err
	}
	src, tr := b.source()
	defer tr.CloseIdleConnections()
	var insts []string
	defer func() {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		for i := len(insts) - 1; i >= 0; i-- {
			err = errors.Join(err, b.m.Release(cctx, insts[i]))
		}
		err = errors.Join(err, b.m.RemoveBase(cctx, im.ID), os.RemoveAll(dir))
	}()
	cacheDir := filepath.Join(dir, "cache")
	cache, err := rootfs.NewCache(cacheDir, src, nil)
	if err != nil {
		return err
	}
	if _, _, _, err := cache.Fetch(ctx, im.ID, ""); err != nil {
		return err
	}
	build := func(inst string) (time.Duration, error) {
		t0 := time.Now()
		path, meta, hit, err := cache.Fetch(ctx, im.ID, "")
		if err != nil {
			return 0, err
		}
		if !hit {
			return 0, fmt.Errorf("warm build of %s: cache miss", im.Name)
		}
		rfs, err := b.m.Prepare(ctx, meta, path, inst)
		if err == nil {
			err = readMarker(rfs)
		}
		return time.Since(t0), err
	}

	// First instance: the image is cached but its base must be made (for
	// a tarball, RemoveBase deleted the extracted tree Release keeps; in
	// service that happens only after an eviction).
	first := filepath.Join(dir, "first")
	insts = append(insts, first)
	for range b.cfg.FirstReps {
		if err := b.m.RemoveBase(ctx, im.ID); err != nil {
			return err
		}
		// As for cold builds: the image is on the local disk, not
		// necessarily in memory; and repeated extraction into space just
		// freed is slower and noisier on this kind of VM without it.
		if err := b.settle(); err != nil {
			return err
		}
		d, err := build(first)
		if err != nil {
			return err
		}
		r.WarmFirst = append(r.WarmFirst, d)
		if err := b.m.Release(ctx, first); err != nil {
			return err
		}
	}

	// Base mounted: one instance holds it, then Instances more.
	holder := filepath.Join(dir, "holder")
	insts = append(insts, holder)
	if _, err := build(holder); err != nil {
		return err
	}
	// Memory is measured on the largest images only: what an idle overlay
	// costs does not depend on the image's size, and letting the host's
	// memory settle takes seconds.
	fp := &r.Footprint
	fp.Instances = b.cfg.Instances
	fp.MemMeasured = im.PayloadMiB == slices.Max(b.cfg.SizesMiB)
	var before Meminfo
	var noise0 int64
	if fp.MemMeasured {
		unix.Sync()
		if err := b.waitMemStable(ctx); err != nil {
			return err
		}
		if before, noise0, err = memSettled(ctx); err != nil {
			return err
		}
	}
	var instDirs []string
	for i := range b.cfg.Instances {
		inst := filepath.Join(dir, fmt.Sprintf("i%03d", i))
		insts = append(insts, inst)
		instDirs = append(instDirs, inst)
		d, err := build(inst)
		if err != nil {
			return err
		}
		r.Warm = append(r.Warm, d)
	}
	if fp.MemMeasured {
		if err := b.waitMemStable(ctx); err != nil {
			return err
		}
		after, noise1, err := memSettled(ctx)
		if err != nil {
			return err
		}
		fp.IdleNoise = max(noise0, noise1)
		fp.MemAvailableDrop = before.MemAvailable - after.MemAvailable
		fp.SlabGrowth = after.Slab - before.Slab
		fp.PercpuGrowth = after.Percpu - before.Percpu
		fp.SlabObjectsGrowth = after.SlabObjects - before.SlabObjects
		fp.OvlInodeGrowth = after.OvlInode - before.OvlInode
	}

	// Disk: du -sx of each instance directory (the overlay's mount point
	// is another filesystem, so only upper/ and work/ count), the cache,
	// and the base unless it is a mount.
	out, err := output(ctx, "du", append([]string{"-sxB1"}, instDirs...)...)
	if err != nil {
		return err
	}
	if fp.Disk, err = ParseDu(out); err != nil {
		return err
	}
	if out, err = output(ctx, "du", "-sxB1", cacheDir); err != nil {
		return err
	}
	if v, err := ParseDu(out); err != nil || len(v) != 1 {
		return fmt.Errorf("du %s: %q: %v", cacheDir, out, err)
	} else {
		fp.CacheBytes = v[0]
	}
	base := filepath.Join(b.baseDir, im.ID)
	if fp.BaseMounted, err = isMountPoint(base); err != nil {
		return err
	}
	if !fp.BaseMounted {
		if out, err = output(ctx, "du", "-sxB1", base); err != nil {
			return err
		}
		if v, err := ParseDu(out); err != nil || len(v) != 1 {
			return fmt.Errorf("du %s: %q: %v", base, out, err)
		} else {
			fp.BaseBytes = v[0]
		}
	}
	if im.Format == "qcow2" {
		// The FUSE export's daemon, by the pid file the Mounter keeps.
		if pb, err := os.ReadFile(filepath.Join(b.baseDir, ".state", im.ID+".pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(pb))); err == nil {
				fp.ExportRSS = vmRSS(pid)
			}
		}
	}
	return b.copies(ctx, im, cacheDir, base, dir, fp)
}

// vmRSS returns the resident set of a process (bytes), 0 if unknown.
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && len(f) == 2 && f[1] == "kB" {
				return n << 10
			}
		}
	}
	return 0
}

// copies makes Copies full copies of the image, the way image backends
// without a shared base do: nova's Flat backend copies the raw _base file
// per instance (a qcow2 image is converted to raw once first, as with
// force_raw_images), LXD's dir driver copies the unpacked root tree. Each is
// timed with the sync that makes it durable.
func (b *bench) copies(ctx context.Context, im *Image, cacheDir, base, dir string, fp *Footprint) error {
	if b.cfg.Copies == 0 {
		return nil
	}
	from := filepath.Join(cacheDir, im.ID)
	var argv func(dst string) []string
	switch im.Format {
	case "raw":
		fp.CopyWhat = "cp of the raw image (nova Flat)"
		argv = func(dst string) []string { return []string{"cp", from, dst} }
	case "qcow2":
		fp.CopyWhat = "cp of the image converted to raw once (nova Flat, force_raw_images)"
		raw := filepath.Join(dir, "flat-base.raw")
		if err := run(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", from, raw); err != nil {
			return err
		}
		defer os.Remove(raw)
		from = raw
		argv = func(dst string) []string { return []string{"cp", from, dst} }
	default:
		fp.CopyWhat = "cp -a of the extracted tree (LXD dir)"
		argv = func(dst string) []string { return []string{"cp", "-a", base + "/.", dst} }
	}
	for i := range b.cfg.Copies {
		dst := filepath.Join(dir, fmt.Sprintf("copy%d", i))
		if im.Format != "raw" && im.Format != "qcow2" {
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
		}
		unix.Sync()
		a := argv(dst)
		t0 := time.Now()
		if err := run(ctx, a[0], a[1:]...); err != nil {
			return err
		}
		unix.Sync()
		fp.CopyTimes = append(fp.CopyTimes, time.Since(t0))
		out, err := output(ctx, "du", "-sxB1", dst)
		if err != nil {
			return err
		}
		v, err := ParseDu(out)
		if err != nil || len(v) != 1 {
			return fmt.Errorf("du %s: %q: %v", dst, out, err)
		}
		fp.CopyDisk = append(fp.CopyDisk, v[0])
	}
	return nil
}

// memSnapshot reads /proc/meminfo and the ovl_inode slab after collecting
// this process's garbage, so that the Go heap adds as little as possible,
// and after folding the per-CPU vmstat counters into the global ones
// (/proc/sys/vm/stat_refresh), which otherwise lag by up to a second.
func memSnapshot() (Meminfo, error) {
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/sys/vm/stat_refresh", []byte("1\n"), 0o200)
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return Meminfo{}, err
	}
	m, err := ParseMeminfo(f)
	f.Close()
	if err != nil {
		return m, err
	}
	if sf, err := os.Open("/proc/slabinfo"); err == nil {
		caches, err := ParseSlabinfo(sf)
		sf.Close()
		if err != nil {
			return m, err
		}
		for _, v := range caches {
			m.SlabObjects += v
		}
		m.OvlInode = caches["ovl_inode"]
	}
	return m, nil
}

// memSnapshots is how many snapshots memSettled takes, memInterval apart.
const (
	memSnapshots = 3
	memInterval  = 250 * time.Millisecond
)

// waitMemStable waits (at most memStableTimeout) until MemAvailable moved
// less than memStableBand over the last 0.75 s: after large frees
// (deleted files, dropped caches) the kernel keeps handing memory back for
// a few seconds (proactive reclaim, free page reporting to the hypervisor).
func (b *bench) waitMemStable(ctx context.Context) error {
	const step = 250 * time.Millisecond
	var hist []int64
	start := time.Now()
	for {
		m, err := memSnapshot()
		if err != nil {
			return err
		}
		hist = append(hist, m.MemAvailable)
		if n := len(hist); n >= 4 {
			w := hist[n-4:]
			if slices.Max(w)-slices.Min(w) < memStableBand {
				b.logf("memory settled after %.1f s", time.Since(start).Seconds())
				return nil
			}
		}
		if time.Since(start) > memStableTimeout {
			// Measured anyway; the noise figure shows it.
			b.logf("memory still moving after %.0f s: measuring anyway", memStableTimeout.Seconds())
			return nil
		}
		if err := sleepCtx(ctx, step); err != nil {
			return err
		}
	}
}

const (
	memStableTimeout = 5 * time.Second
	memStableBand    = 512 << 10
)

// memSettled takes memSnapshots snapshots and returns the median of each
// field and how much MemAvailable moved among them (max - min): the noise
// of an idle host over about a second.
func memSettled(ctx context.Context) (Meminfo, int64, error) {
	var avail, slab, percpu, objs, ovl []int64
	for i := range memSnapshots {
		if i > 0 {
			if err := sleepCtx(ctx, memInterval); err != nil {
				return Meminfo{}, 0, err
			}
		}
		m, err := memSnapshot()
		if err != nil {
			return Meminfo{}, 0, err
		}
		avail, slab, ovl = append(avail, m.MemAvailable), append(slab, m.Slab), append(ovl, m.OvlInode)
		percpu, objs = append(percpu, m.Percpu), append(objs, m.SlabObjects)
	}
	spread := slices.Max(avail) - slices.Min(avail)
	return Meminfo{MemAvailable: MedianInt64(avail), Slab: MedianInt64(slab), Percpu: MedianInt64(percpu),
		SlabObjects: MedianInt64(objs), OvlInode: MedianInt64(ovl)}, spread, nil
}

// sleepCtx sleeps for d unless ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// isMountPoint reports whether p is on another filesystem than its parent.
func isMountPoint(p string) (bool, error) {
	var st, pst unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(p), &pst); err != nil {
		return false, err
	}
	return st.Dev != pst.Dev, nil
}

// sweep is the last-resort cleanup: Recover for the Mounter's base
// directory, then whatever is still mounted under the work directory is
// detached lazily and loop devices backed by files in it are freed. It
// returns an error naming what it had to clean (a bug: every step releases
// what it made).
func (b *bench) sweep() error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var errs []error
	if _, err := os.Stat(b.baseDir); err == nil {
		rep, err := b.m.Recover(ctx, func(string) bool { return false })
		if err != nil {
			errs = append(errs, fmt.Errorf("recover: %w", err))
		}
		if len(rep.ReleasedBases)+len(rep.StoppedExports)+len(rep.DetachedLoops) > 0 {
			errs = append(errs, fmt.Errorf("left behind and released: bases %v, exports %v, loops %v",
				rep.ReleasedBases, rep.StoppedExports, rep.DetachedLoops))
		}
	}
	mounts, err := testenv.MountsUnder(b.work)
	if err != nil {
		errs = append(errs, err)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		errs = append(errs, fmt.Errorf("mount left behind: %s", mounts[i]))
		if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	loops, err := testenv.LoopDevicesUnder(b.work)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range loops {
		errs = append(errs, fmt.Errorf("loop device left behind: %s -> %s", l.Dev, l.BackingFile))
		if err := run(ctx, "losetup", "-d", l.Dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// machine collects the host facts printed with the results.
func machine(work string) Machine {
	m := Machine{LoadStart: loadavg()}
	ctx := context.Background()
	if out, err := output(ctx, "nproc"); err == nil {
		m.Nproc = strings.TrimSpace(out)
	}
	if out, err := output(ctx, "free", "-m"); err == nil {
		m.Free = strings.TrimRight(out, "\n")
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := output(ctx, "df", "-h", "--output=source,fstype,size,avail", work); err == nil {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		m.Disk = strings.Join(strings.Fields(lines[len(lines)-1]), " ")
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
