package procfs

import (
	"errors"
	"io/fs"
	"os"
	"testing"
)

func TestReadStatSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() || st.StartTicks == 0 || (st.State != 'R' && st.State != 'S') {
		t.Errorf("stat = %+v", st)
	}
	if up, err := Uptime(os.Getpid()); err != nil || up < 0 || up > 3600 {
		t.Errorf("uptime = %d, %v", up, err)
	}
	if _, err := ReadStat(1 << 30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing process: %v", err)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`: "/a b", `/x\134y`: `/x\y`, `/t\011`: "/t\t", `/plain`: "/plain", `/not\9oct`: `/not\9oct`, `/end\04`: `/end\04`,
	} {
		if got := UnescapeMountinfo(in); got != want {
			t.Errorf("%q → %q, want %q", in, got, want)
		}
	}
}
