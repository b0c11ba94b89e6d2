// Package shadow sets a user's password in a root filesystem's /etc/shadow,
// hashed with SHA-512 crypt ($6$), without ever following a link out of it.
package shadow

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrNoShadow: the root filesystem has no /etc/shadow (or no such user).
var ErrNoShadow = errors.New("no shadow entry")

const b64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Crypt512 is glibc's SHA-512 crypt with the default 5000 rounds.
func Crypt512(password, salt string) string {
	if len(salt) > 16 {
		salt = salt[:16]
	}
	const rounds = 5000
	p, s := []byte(password), []byte(salt)
	alt := sha512.New()
	alt.Write(p)
	alt.Write(s)
	alt.Write(p)
	altSum := alt.Sum(nil)

	a := sha512.New()
	a.Write(p)
	a.Write(s)
	for i := len(p); i > 0; i -= 64 {
		a.Write(altSum[:min(i, 64)])
	}
	for i := len(p); i > 0; i >>= 1 {
		if i&1 != 0 {
			a.Write(altSum)
		} else {
			a.Write(p)
		}
	}
	aSum := a.Sum(nil)

	dp := sha512.New()
	for range p {
		dp.Write(p)
	}
	pBytes := repeat(dp.Sum(nil), len(p))
	ds := sha512.New()
	for i := 0; i < 16+int(aSum[0]); i++ {
		ds.Write(s)
	}
	sBytes := repeat(ds.Sum(nil), len(s))

	c := aSum
	for i := 0; i < rounds; i++ {
		h := sha512.New()
		if i&1 != 0 {
			h.Write(pBytes)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(sBytes)
		}
		if i%7 != 0 {
			h.Write(pBytes)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pBytes)
		}
		c = h.Sum(nil)
	}
	order := [][3]int{{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4}, {47, 5, 26}, {6, 27, 48},
		{28, 49, 7}, {50, 8, 29}, {9, 30, 51}, {31, 52, 10}, {53, 11, 32}, {12, 33, 54}, {34, 55, 13},
		{56, 14, 35}, {15, 36, 57}, {37, 58, 16}, {59, 17, 38}, {18, 39, 60}, {40, 61, 19}, {62, 20, 41}}
	var out strings.Builder
	out.WriteString("$6$" + salt + "$")
	enc := func(v uint32, n int) {
		for ; n > 0; n-- {
			out.WriteByte(b64[v&0x3f])
			v >>= 6
		}
	}
	for _, o := range order {
		enc(uint32(c[o[0]])<<16|uint32(c[o[1]])<<8|uint32(c[o[2]]), 4)
	}
	enc(uint32(c[63]), 2)
	return out.String()
}

func repeat(sum []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, sum[:min(n-len(out), len(sum))]...)
	}
	return out
}

// NewSalt returns 16 random salt characters.
func NewSalt() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	s := make([]byte, 16)
	for i, v := range b {
		s[i] = b64[int(v)%64]
	}
	return string(s)
}

// SetPassword replaces user's password hash in <rootfs>/etc/shadow and sets
// the last-change day. The file is rewritten through a temporary file and a
// rename inside rootfs; links that leave rootfs are refused (os.Root).
func SetPassword(rootfs, user, password string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	defer root.Close()
	st, err := root.Lstat("etc/shadow")
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: the image has no /etc/shadow", ErrNoShadow)
	}
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: /etc/shadow is not a regular file", ErrNoShadow)
	}
	old, err := root.ReadFile("etc/shadow")
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	hash := Crypt512(password, NewSalt())
	day := strconv.FormatInt(time.Now().Unix()/86400, 10)
	var out bytes.Buffer
	found := false
	sc := bufio.NewScanner(bytes.NewReader(old))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == user {
			f[1], f[2] = hash, day
			line = strings.Join(f, ":")
			found = true
		}
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	if !found {
		return fmt.Errorf("%w: no %s in /etc/shadow", ErrNoShadow, user)
	}
	tmp := "etc/.shadow.lxc-agent"
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	defer root.Remove(tmp)
	_, werr := f.Write(out.Bytes())
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("set password: %w", werr)
	}
	if err := copyOwner(root, tmp, st); err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	if err := root.Rename(tmp, "etc/shadow"); err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	return nil
}
