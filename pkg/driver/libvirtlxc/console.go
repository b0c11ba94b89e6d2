package libvirtlxc

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// libvirt's LXC driver accepts <log file=…> on a pty console but does not
// write it (only QEMU chardevs are logged, through virtlogd). The console
// of a running domain is the pty named by <source path='/dev/pts/N'/> in
// its live XML; the driver reads that pty (put in raw mode, as libvirt does
// for its own console streams) and appends what arrives to the log file.
// Output produced while nobody reads waits in the pty (the container's
// console writes block once it is full), so nothing is lost across an
// agent restart: New adopts the consoles of running domains.

// consoles are the console loggers of this process, by instance id.
type consoles struct {
	log *slog.Logger
	mu  sync.Mutex
	m   map[string]*consoleLogger
}

type consoleLogger struct {
	pty  string
	f    *os.File
	done chan struct{}
}

func newConsoles(log *slog.Logger) *consoles {
	return &consoles{log: log, m: map[string]*consoleLogger{}}
}

func (l *consoleLogger) running() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// start (re)starts logging id's console from pty into logPath, replacing
// a logger of an earlier run.
func (c *consoles) start(id, pty, logPath string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[id]; old != nil {
		old.close()
		delete(c.m, id)
	}
	c.startLocked(id, pty, logPath)
}

// ensure starts logging id's console unless a logger for that pty runs.
func (c *consoles) ensure(id, pty, logPath string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[id]; old != nil {
		if old.pty == pty && old.running() {
			return
		}
		old.close()
		delete(c.m, id)
	}
	c.startLocked(id, pty, logPath)
}

func (c *consoles) startLocked(id, pty, logPath string) {
	f, err := openConsole(pty)
	if err != nil {
		c.log.Warn("console: cannot open the domain's pty; console output is not logged", "id", id, "pty", pty, "err", err)
		return
	}
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		f.Close()
		c.log.Warn("console: cannot open the console log", "id", id, "path", logPath, "err", err)
		return
	}
	l := &consoleLogger{pty: pty, f: f, done: make(chan struct{})}
	c.m[id] = l
	go func() {
		defer close(l.done)
		defer out.Close()
		_, err := io.Copy(out, f)
		f.Close()
		// EIO: the container stopped and its controller closed the pty.
		if err != nil && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
			c.log.Warn("console: logging stopped", "id", id, "pty", pty, "err", err)
		}
	}()
}

// stop ends id's logger, if any.
func (c *consoles) stop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.m[id]; l != nil {
		l.close()
		delete(c.m, id)
	}
}

func (c *consoles) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, l := range c.m {
		l.close()
		delete(c.m, id)
	}
}

func (l *consoleLogger) close() {
	l.f.Close() // unblocks the pollable Read
	<-l.done
}

// openConsole opens the slave side of a console pty for reading, without
// making it a controlling terminal, and switches it to raw mode so that
// the line discipline neither echoes the output back into the container
// nor edits it.
func openConsole(pty string) (*os.File, error) {
	fd, err := unix.Open(pty, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: pty, Err: err}
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "tcgetattr", Path: pty, Err: err}
	}
	// cfmakeraw
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "tcsetattr", Path: pty, Err: err}
	}
	// A non-blocking fd: os.NewFile registers it with the runtime poller,
	// so Close from another goroutine ends a pending Read.
	return os.NewFile(uintptr(fd), pty), nil
}
