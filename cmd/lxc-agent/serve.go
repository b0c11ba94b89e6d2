package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/lxc-agent/lxc-agent/internal/compute"
	"github.com/lxc-agent/lxc-agent/internal/config"
	"github.com/lxc-agent/lxc-agent/internal/keystone"
	"github.com/lxc-agent/lxc-agent/internal/metrics"
	"github.com/lxc-agent/lxc-agent/internal/notify"
	"github.com/lxc-agent/lxc-agent/pkg/driver"
	"github.com/lxc-agent/lxc-agent/pkg/driver/golxc"
	"github.com/lxc-agent/lxc-agent/pkg/driver/libvirtlxc"
	"github.com/lxc-agent/lxc-agent/pkg/idmap"
	"github.com/lxc-agent/lxc-agent/pkg/netplug"
	"github.com/lxc-agent/lxc-agent/pkg/rootfs"
	"github.com/lxc-agent/lxc-agent/pkg/rpc"
	"github.com/lxc-agent/lxc-agent/pkg/snapshot"
)

// configFlags registers the flags shared by serve and the client commands.
func configFlags(fs *flag.FlagSet) (*stringList, *config.Flags) {
	files := &stringList{}
	f := &config.Flags{}
	fs.Var(files, "config-file", "configuration file in nova.conf format (repeatable; later files win)")
	fs.StringVar(&f.Host, "host", "", "override [DEFAULT] host")
	fs.StringVar(&f.TransportURL, "transport-url", "", "override [DEFAULT] transport_url")
	return files, f
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	files, flags := configFlags(fs)
	fs.StringVar(&flags.StatePath, "state-path", "", "override [DEFAULT] state_path")
	fs.StringVar(&flags.InstancesPath, "instances-path", "", "override [DEFAULT] instances_path")
	fs.StringVar(&flags.Backend, "backend", "", "override [lxc_agent] backend")
	fs.StringVar(&flags.ImageDir, "image-dir", "", "override [lxc_agent] image_dir")
	fs.StringVar(&flags.MetricsAddress, "metrics-address", "", "override [lxc_agent] metrics_address (\"off\" disables)")
	fs.StringVar(&flags.GlanceEndpoint, "glance-endpoint", "", "override [glance] endpoint_override")
	jsonLogs := fs.Bool("log-json", os.Getenv("JOURNAL_STREAM") != "" || os.Getenv("NOTIFY_SOCKET") != "", "log as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(*files, *flags)
	if err != nil {
		return err
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if *jsonLogs {
		handler = slog.NewJSONHandler(os.Stderr, nil)
	}
	log := slog.New(handler).With("host", cfg.Host)
	return run(ctx, cfg, log)
}

func run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	for _, d := range []string{cfg.StatePath, cfg.InstancesPath, cfg.LXCAgent.ImageCacheDir, cfg.LXCAgent.LXCPath, cfg.LXCAgent.ImageDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var drv driver.Driver
	switch cfg.LXCAgent.Backend {
	case "libvirt-lxc":
		lv, err := libvirtlxc.New(cfg.LXCAgent.LibvirtURI, log)
		if err != nil {
			return err
		}
		defer lv.Close()
		drv = lv
	default:
		lx, err := golxc.New(cfg.LXCAgent.LXCPath, golxc.SelfExecHelper(), log)
		if err != nil {
			return err
		}
		if err := golxc.CheckIDMaps(cfg.LXCAgent.IDMaps); err != nil {
			return fmt.Errorf("[libvirt] uid_maps, gid_maps: %w", err)
		}
		drv = lx
	}
	var src rootfs.Source = rootfs.LocalSource{Dir: cfg.LXCAgent.ImageDir}
	var uploader compute.ImageUploader = localUploader{snapshot.LocalDir{Dir: cfg.LXCAgent.ImageDir}}
	glanceEP := cfg.Glance.Endpoint()
	if glanceEP == "" && cfg.Glance.Auth.AuthType != "" && cfg.Glance.Auth.AuthType != "none" {
		// nova finds Glance in the Keystone catalog; so does the agent. The
		// requests themselves carry the user's token, as nova's do.
		sc, err := keystone.NewServiceClient(ctx, keystoneOptions(cfg.Glance.Auth), "image")
		if err != nil {
			return fmt.Errorf("[glance]: %w", err)
		}
		glanceEP = strings.TrimRight(sc.Endpoint, "/")
	}
	if ep := glanceEP; ep != "" {
		src = rootfs.GlanceSource{Endpoint: ep, Client: &http.Client{Timeout: 0}}
		uploader = glanceUploader{snapshot.Glance{Endpoint: ep, Client: &http.Client{}}}
		log.Info("images from glance", "endpoint", ep)
	} else {
		log.Info("no glance configured: images from the local image directory", "dir", cfg.LXCAgent.ImageDir)
	}
	var mgr *compute.Manager
	cacheDir := filepath.Join(cfg.LXCAgent.ImageCacheDir, "images")
	mounter := rootfs.NewMounter(filepath.Join(cfg.LXCAgent.ImageCacheDir, "mnt"), log, rootfs.WithImageDir(cacheDir),
		rootfs.WithIDMap(cfg.LXCAgent.IDMaps))
	if len(cfg.LXCAgent.IDMaps) > 0 {
		log.Info("new containers run unprivileged", "idmap", idmap.Key(cfg.LXCAgent.IDMaps))
	}
	cache, err := rootfs.NewCache(cacheDir, src, log,
		// Extracted root tarballs count in the budget and go with their image.
		rootfs.WithDerived(mounter),
		rootfs.WithBudget(int64(cfg.LXCAgent.ImageCacheBudgetMB)<<20),
		rootfs.WithMinFree(int64(cfg.LXCAgent.ImageCacheMinFreeMB)<<20),
		// Called only by Fetch and Evict, which run once mgr is set.
		rootfs.WithInUse(func(id string) bool { return mgr.ImageInUse(id) }))
	if err != nil {
		return err
	}
	plug := netplug.New(log, netplug.WithOVS(netplug.OVSConfig{DB: cfg.OVS.Connection, Timeout: cfg.OVS.Timeout}))

	tc, err := transport(cfg)
	if err != nil {
		return err
	}
	notifier, err := notify.New(ctx, notify.Config{
		Driver: cfg.Notifications.Driver, Topics: cfg.Notifications.Topics, TransportURL: cfg.Notifications.TransportURL,
		Format: cfg.Notifications.Format, VersionedTopics: cfg.Notifications.VersionedTopics,
		Host: cfg.Host, Exchange: cfg.ControlExchange, ImageURLBase: cfg.Glance.Endpoint(),
	}, tc, log)
	if err != nil {
		return fmt.Errorf("notifications: %w", err)
	}
	defer notifier.Close()
	// Without a driver the manager gets no notifier at all, so instance
	// RPCs build no notification payloads.
	var notes compute.Notifier
	if notifier.Enabled() {
		notes = notifier
		log.Info("notifications", "driver", cfg.Notifications.Driver, "format", cfg.Notifications.Format)
	}
	var nova *novaLink
	if cfg.JoinsNova() {
		if nova, err = joinNova(ctx, cfg, tc, log); err != nil {
			return err
		}
		defer nova.Close()
	} else {
		log.Info("standalone mode: no nova conductor or placement ([placement] not configured)")
	}

	met := metrics.New(version, drv.Name(), knownMethods(), func(ctx context.Context) map[string]int {
		return mgr.PowerStates(ctx)
	})
	mgr, err = compute.New(compute.Config{
		Host: cfg.Host, Node: cfg.LXCAgent.Node, InstancesPath: cfg.InstancesPath, FaultsDir: filepath.Join(cfg.StatePath, "faults"),
		ShutdownTimeout: cfg.ShutdownTimeout, DefaultMTU: cfg.LXCAgent.DefaultMTU,
		DefaultPrefix: cfg.LXCAgent.DefaultPrefix, DefaultGateway: cfg.LXCAgent.DefaultGateway,
		SnapshotFormat: compute.SnapshotFormat(cfg.LXCAgent.SnapshotFormat),
		PidsLimit:      cfg.LXCAgent.PidsLimit, SwapMB: cfg.LXCAgent.SwapMB, IDMaps: cfg.LXCAgent.IDMaps,
	}, compute.Deps{Driver: drv, Images: imageStore{cache}, Rootfs: rootfsMounter{mounter, cacheDir}, Net: plugger{plug},
		NICStats: nicStats(plug), Capturer: capturer{}, Uploader: uploader, Metrics: met, Logger: log,
		Nova: nova.conductor(), Allocations: nova.allocations(), Notifier: notes,
		Networks: nova.networks()})
	if err != nil {
		return err
	}
	// After a restart or a host reboot: release what a dead agent left behind
	// (bases nobody uses, exports, loop devices), report overlays of unknown
	// instances, and bring the cache back under its budget.
	rep, err := mounter.Recover(ctx, func(dir string) bool {
		_, ok := mgr.Store().Get(filepath.Base(dir))
		return ok
	})
	if err != nil {
		log.Error("rootfs recovery", "error", err)
	} else {
		log.Info("rootfs recovery", "report", fmt.Sprintf("%+v", rep))
	}
	rec := mgr.Reconcile(ctx, cfg.ResumeGuests)
	log.Info("instances reconciled", "adopted", len(rec.Adopted), "cleaned", rec.Cleaned, "resumed", rec.Resumed,
		"unknown_containers", rec.Unknown, "vanished", rec.Vanished, "replugged", rec.Replugged)
	for _, err := range rec.Errors {
		log.Error("reconcile", "error", err)
	}
	if ev, err := cache.Evict(ctx, nil); err != nil {
		log.Error("image cache eviction", "error", err)
	} else if len(ev.Evicted) > 0 {
		log.Info("image cache eviction", "evicted", len(ev.Evicted), "freed_bytes", ev.Freed, "total_bytes", ev.Total)
	}
	journal, err := rpc.OpenJournal(cfg.LXCAgent.JournalDir)
	if err != nil {
		return err
	}
	endpoints := append(mgr.Endpoints(), rpc.BaseAPI("compute"))
	if nova != nil {
		// nova-compute registers its Service, ComputeNode and placement
		// provider before it consumes compute RPC.
		hs, err := nova.register(ctx, cfg, mgr, drv, log)
		if err != nil {
			return err
		}
		go hs.Run(ctx)
		endpoints = append(endpoints, hs.Endpoint(compute.ComputeRPCVersion))
	}
	srv := rpc.NewServer(rpc.ServerConfig{
		Transport: tc, Exchange: cfg.ControlExchange, Topic: "compute", Server: cfg.Host,
		Concurrency: cfg.ExecutorThreads, Journal: journal, ShutdownGrace: cfg.ShutdownTimeout,
		Logger: log, Observe: met.ObserveRPC,
	}, rpc.NewDispatcher(endpoints...))

	if addr := cfg.LXCAgent.MetricsAddress; addr != "" && addr != "off" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", met.Handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "error", err)
			}
		}()
		defer hs.Close()
		log.Info("metrics", "address", ln.Addr().String())
	}
	go func() {
		select {
		case <-srv.Ready():
			if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
				log.Warn("sd_notify", "error", err)
			}
			log.Info("ready", "instances", len(mgr.Store().List()))
		case <-ctx.Done():
		}
	}()
	err = srv.Run(ctx)
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	log.Info("stopped")
	return err
}

func knownMethods() []string {
	m := &compute.Manager{}
	return append(m.Methods(), "ping", "get_backdoor_port")
}

// transport builds the broker settings from transport_url and [oslo_messaging_rabbit].
func transport(cfg *config.Config) (rpc.TransportConfig, error) {
	tc := rpc.TransportConfig{
		URL: cfg.TransportURL, Heartbeat: cfg.Rabbit.HeartbeatTimeout,
		DurableQueues: cfg.Rabbit.DurableQueues, AutoDelete: cfg.Rabbit.AutoDelete,
		ConnectionName: fmt.Sprintf("lxc-agent:%d:%s", os.Getpid(), cfg.Host),
	}
	if cfg.Rabbit.SSL {
		t := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.Rabbit.SSLCAFile != "" {
			pem, err := os.ReadFile(cfg.Rabbit.SSLCAFile)
			if err != nil {
				return tc, fmt.Errorf("ssl_ca_file: %w", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return tc, fmt.Errorf("ssl_ca_file %s: no certificate", cfg.Rabbit.SSLCAFile)
			}
		}
		if cfg.Rabbit.SSLCertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.Rabbit.SSLCertFile, cfg.Rabbit.SSLKeyFile)
			if err != nil {
				return tc, fmt.Errorf("ssl_cert_file: %w", err)
			}
			t.Certificates = []tls.Certificate{cert}
		}
		tc.TLS = t
	}
	return tc, nil
}
