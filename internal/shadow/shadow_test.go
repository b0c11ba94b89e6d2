package shadow

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Vectors from the SHA-crypt specification, and one checked against Python's
// crypt (glibc) at test time when it is available.
func TestCrypt512(t *testing.T) {
	if got := Crypt512("Hello world!", "saltstring"); got != "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1" {
		t.Errorf("spec vector: %s", got)
	}
	if got := Crypt512("This is just a test", "toolongsaltstring"); got != "$6$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0" {
		t.Errorf("spec vector with a salt over 16 characters: %s", got)
	}
	out, err := exec.Command("/usr/bin/python3", "-W", "ignore", "-c", "import crypt; print(crypt.crypt('s3cr3t pass', '$6$abcdefgh12345678'))").Output()
	if err == nil {
		if want := strings.TrimSpace(string(out)); Crypt512("s3cr3t pass", "abcdefgh12345678") != want {
			t.Errorf("differs from glibc: %s vs %s", Crypt512("s3cr3t pass", "abcdefgh12345678"), want)
		}
	}
}

func TestSetPassword(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	shadow := filepath.Join(root, "etc", "shadow")
	os.WriteFile(shadow, []byte("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"), 0o640)
	if err := SetPassword(root, "root", "pw"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(shadow)
	lines := strings.Split(string(b), "\n")
	f := strings.Split(lines[0], ":")
	if f[0] != "root" || !strings.HasPrefix(f[1], "$6$") || f[1] == "*" || lines[1] != "nobody:*:19000:0:99999:7:::" {
		t.Errorf("shadow = %q", b)
	}
	salt := strings.Split(f[1], "$")[2]
	if Crypt512("pw", salt) != f[1] {
		t.Error("stored hash does not verify")
	}
	if st, _ := os.Stat(shadow); st.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", st.Mode())
	}
	if err := SetPassword(root, "ghost", "pw"); !errors.Is(err, ErrNoShadow) {
		t.Errorf("unknown user: %v", err)
	}
}

func TestSetPasswordRefusesEscapes(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "host-shadow")
	os.WriteFile(outside, []byte("root:HOST:1:::::\n"), 0o600)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink(outside, filepath.Join(root, "etc", "shadow"))
	if err := SetPassword(root, "root", "pw"); err == nil {
		t.Error("followed a symlink out of the rootfs")
	}
	root2 := t.TempDir()
	os.Symlink(filepath.Dir(outside), filepath.Join(root2, "etc"))
	if err := SetPassword(root2, "root", "pw"); err == nil {
		t.Error("followed a directory symlink out of the rootfs")
	}
	if b, _ := os.ReadFile(outside); string(b) != "root:HOST:1:::::\n" {
		t.Errorf("host file changed: %q", b)
	}
	if err := SetPassword(t.TempDir(), "root", "pw"); !errors.Is(err, ErrNoShadow) {
		t.Errorf("no shadow: %v", err)
	}
}
