package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

const (
	mariadbd           = "/usr/sbin/mariadbd"
	mariadbInstallDB   = "/usr/bin/mariadb-install-db"
	mariadbClient      = "/usr/bin/mariadb"
	mariadbStopTimeout = 30 * time.Second
	// MariaDBStartTimeout bounds StartMariaDB when the context has no
	// earlier deadline (mariadb-install-db plus startup; usually 2-4 s).
	MariaDBStartTimeout = 90 * time.Second
	// maxSocketPath is the longest UNIX socket path the kernel accepts
	// (sun_path is 108 bytes with the terminating NUL).
	maxSocketPath = 107
)

// MariaDB user and password for the oslo.db URLs (DSN). The user has all
// privileges, from 127.0.0.1 only.
const (
	MariaDBUser = "lxcagent"
	MariaDBPass = "lxcagent-db"
)

// MariaDB is a private mariadbd listening on 127.0.0.1:Port and on a UNIX
// socket (Dir/mysqld.sock, or in a short temporary dir when Dir is too deep
// for a socket path), with its datadir, config and logs under Dir. root
// connects through the socket (unix_socket authentication); services use
// MariaDBUser over TCP (DSN).
type MariaDB struct {
	Dir    string
	Port   int
	Socket string
	// InstallDB is how long mariadb-install-db took (0 if the datadir
	// already existed); Startup is how long mariadbd took until it answered.
	InstallDB time.Duration
	Startup   time.Duration

	proc    *proc
	sockDir string // private dir holding Socket when Dir is too deep for it
}

// StartMariaDB starts a private mariadbd whose state lives under dir
// (created if needed; the datadir is initialised with mariadb-install-db
// the first time) on a free port, creates MariaDBUser and returns once it
// answers queries.
func StartMariaDB(ctx context.Context, dir string) (*MariaDB, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, MariaDBStartTimeout)
		defer cancel()
	}
	m := &MariaDB{Dir: dir, Socket: filepath.Join(dir, "mysqld.sock")}
	if len(m.Socket) > maxSocketPath {
		// A deep dir (t.TempDir() of a long test name): the socket goes to
		// a short private dir instead, removed again by Stop.
		if m.sockDir, err = os.MkdirTemp("", "lxc-agent-mdb-"); err != nil {
			return nil, err
		}
		m.Socket = filepath.Join(m.sockDir, "mysqld.sock")
	}
	for _, d := range []string{"etc", "data", "log", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := m.writeConfig(0); err != nil {
		m.removeSockDir()
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(m.dataDir(), "mysql")); errors.Is(err, os.ErrNotExist) {
		start := time.Now()
		if err := m.installDB(ctx); err != nil {
			m.removeSockDir()
			return nil, err
		}
		m.InstallDB = time.Since(start)
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ps, err := FreePorts(1)
		if err != nil {
			lastErr = err
			break
		}
		m.Port = ps[0]
		if lastErr = m.writeConfig(m.Port); lastErr != nil {
			break
		}
		lastErr = m.start(ctx)
		if lastErr == nil || ctx.Err() != nil || !errors.Is(lastErr, errExited) {
			break
		}
	}
	if lastErr != nil {
		m.removeSockDir()
		return nil, lastErr
	}
	// The user is created over the socket as root; "IF NOT EXISTS" and a
	// fresh GRANT keep a restart on an existing datadir working.
	err = m.Exec(ctx, fmt.Sprintf(`CREATE USER IF NOT EXISTS '%[1]s'@'127.0.0.1' IDENTIFIED BY '%[2]s';
ALTER USER '%[1]s'@'127.0.0.1' IDENTIFIED BY '%[2]s';
GRANT ALL PRIVILEGES ON *.* TO '%[1]s'@'127.0.0.1';
FLUSH PRIVILEGES;`, MariaDBUser, MariaDBPass))
	if err != nil {
		_ = m.Stop()
		return nil, err
	}
	return m, nil
}

func (m *MariaDB) confPath() string { return filepath.Join(m.Dir, "etc", "my.cnf") }
func (m *MariaDB) dataDir() string  { return filepath.Join(m.Dir, "data") }

// LogFile is mariadbd's error log.
func (m *MariaDB) LogFile() string { return filepath.Join(m.Dir, "log", "mariadb.err") }

func (m *MariaDB) writeConfig(port int) error {
	// Durability is traded for speed: the databases live as long as a test.
	conf := fmt.Sprintf(`[mysqld]
user = root
datadir = %[1]s
socket = %[2]s
pid-file = %[3]s
tmpdir = %[4]s
log-error = %[5]s
bind-address = 127.0.0.1
port = %[6]d
skip-name-resolve
skip-log-bin
performance_schema = OFF
innodb_buffer_pool_size = 128M
innodb_log_file_size = 64M
innodb_flush_log_at_trx_commit = 0
innodb_doublewrite = 0
innodb_flush_method = nosync
max_connections = 1000
character-set-server = utf8mb3
collation-server = utf8mb3_general_ci
`, m.dataDir(), m.Socket, filepath.Join(m.Dir, "mariadbd.pid"),
		filepath.Join(m.Dir, "tmp"), m.LogFile(), port)
	return os.WriteFile(m.confPath(), []byte(conf), 0o644)
}

func (m *MariaDB) installDB(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, mariadbInstallDB, "--defaults-file="+m.confPath(),
		"--user=root", "--auth-root-authentication-method=socket", "--skip-test-db")
	cmd.Env = serviceEnv([]string{"MYSQL", "MARIADB"}, "HOME="+m.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb-install-db: %w\n%s\n%s", err, out, tailFile(m.LogFile(), 30))
	}
	return nil
}

func (m *MariaDB) start(ctx context.Context) error {
	start := time.Now()
	// --defaults-file must be the first argument.
	p, err := startProc("mariadbd", filepath.Join(m.Dir, "log", "mariadbd.out"),
		serviceEnv([]string{"MYSQL", "MARIADB"}, "HOME="+m.Dir),
		mariadbd, "--defaults-file="+m.confPath())
	if err != nil {
		return err
	}
	for {
		// The socket appears once mariadbd accepts connections (TCP too).
		if _, err := os.Stat(m.Socket); err == nil {
			if err := m.Exec(ctx, "SELECT 1"); err == nil && !p.exited() {
				m.proc = p
				m.Startup = time.Since(start)
				return nil
			}
		}
		if p.exited() {
			_ = p.stop(mariadbStopTimeout)
			return fmt.Errorf("mariadbd on 127.0.0.1:%d: %w: %w\n%s", m.Port, errExited, p.exitError(), tailFile(m.LogFile(), 30))
		}
		select {
		case <-ctx.Done():
			_ = p.stop(mariadbStopTimeout)
			return fmt.Errorf("mariadbd on 127.0.0.1:%d not ready: %w\n%s", m.Port, ctx.Err(), tailFile(m.LogFile(), 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Exec runs SQL statements as root (over the UNIX socket) with the mariadb
// client and returns an error with the client's output if they fail.
func (m *MariaDB) Exec(ctx context.Context, sql string) error {
	_, err := m.Query(ctx, sql)
	return err
}

// Query runs SQL statements as root (over the UNIX socket) and returns the
// client's batch output (tab-separated rows, no column names).
func (m *MariaDB) Query(ctx context.Context, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, mariadbClient, "--no-defaults", "--socket="+m.Socket,
		"--user=root", "--batch", "--skip-column-names", "--execute="+sql)
	cmd.Env = serviceEnv([]string{"MYSQL", "MARIADB"}, "HOME="+m.Dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("mariadb %q: %w: %s", sql, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

var dbNameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// CreateDatabase creates database name (utf8) if it does not exist.
func (m *MariaDB) CreateDatabase(ctx context.Context, name string) error {
	if !dbNameRE.MatchString(name) {
		return fmt.Errorf("mariadb: bad database name %q", name)
	}
	return m.Exec(ctx, "CREATE DATABASE IF NOT EXISTS `"+name+"` CHARACTER SET utf8mb3")
}

// DSN returns the oslo.db URL of database db for MariaDBUser over TCP:
// mysql+pymysql://user:pass@127.0.0.1:PORT/db?charset=utf8.
func (m *MariaDB) DSN(db string) string {
	return fmt.Sprintf("mysql+pymysql://%s:%s@127.0.0.1:%d/%s?charset=utf8", MariaDBUser, MariaDBPass, m.Port, db)
}

// Pid returns the pid of mariadbd, or 0.
func (m *MariaDB) Pid() int {
	if m.proc == nil || m.proc.exited() {
		return 0
	}
	return m.proc.Pid()
}

// Stop shuts mariadbd down (SIGTERM, then SIGKILL after 30 s). The datadir
// is left in place.
func (m *MariaDB) Stop() error {
	err := m.proc.stop(mariadbStopTimeout)
	m.proc = nil
	m.removeSockDir()
	return err
}

func (m *MariaDB) removeSockDir() {
	if m.sockDir != "" {
		os.RemoveAll(m.sockDir)
		m.sockDir = ""
	}
}
