// Package config reads lxc-agent's configuration in nova.conf style: oslo.config
// INI files, nova-compute's own option names where the meaning is the same,
// and an [lxc_agent] section for what is new.
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrSyntax classifies a malformed configuration file.
var ErrSyntax = errors.New("syntax error")

// INI holds parsed options: section → option → value. Section "DEFAULT" is
// kept as written; other section names and all option names are lowercased
// (oslo.config matches them case-insensitively).
type INI map[string]map[string]string

// ParseFile parses one file and merges it into ini (later files win).
func (ini INI) ParseFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	return ini.Parse(path, f)
}

// Parse merges the INI text read from r; name is used in error messages.
func (ini INI) Parse(name string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	section, key := "", ""
	lineno := 0
	for sc.Scan() {
		lineno++
		line := sc.Text()
		if lineno == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
			key = ""
			continue
		case trimmed[0] == '#' || trimmed[0] == ';':
			continue
		case line[0] == ' ' || line[0] == '\t':
			// oslo's iniparser: an indented line continues the previous value.
			if key == "" {
				return fmt.Errorf("%s:%d: %w: unexpected continuation line", name, lineno, ErrSyntax)
			}
			ini[section][key] += "\n" + trimmed
			continue
		case trimmed[0] == '[':
			if !strings.HasSuffix(trimmed, "]") || len(trimmed) < 3 {
				return fmt.Errorf("%s:%d: %w: invalid section header %q", name, lineno, ErrSyntax, trimmed)
			}
			section = strings.TrimSpace(trimmed[1 : len(trimmed)-1])
			if !strings.EqualFold(section, "DEFAULT") {
				section = strings.ToLower(section)
			} else {
				section = "DEFAULT"
			}
			if ini[section] == nil {
				ini[section] = map[string]string{}
			}
			key = ""
			continue
		}
		if section == "" {
			return fmt.Errorf("%s:%d: %w: option outside of any section", name, lineno, ErrSyntax)
		}
		i := strings.IndexAny(trimmed, "=:")
		if i <= 0 {
			return fmt.Errorf("%s:%d: %w: expected \"name = value\", got %q", name, lineno, ErrSyntax, trimmed)
		}
		key = strings.ToLower(strings.TrimSpace(trimmed[:i]))
		val := strings.TrimSpace(trimmed[i+1:])
		if len(val) >= 2 && (val[0] == '"' && val[len(val)-1] == '"' || val[0] == '\'' && val[len(val)-1] == '\'') {
			val = val[1 : len(val)-1]
		}
		ini[section][key] = val
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s:%d: %w", name, lineno+1, err)
	}
	return nil
}

// Get returns the raw value of section/option.
func (ini INI) Get(section, option string) (string, bool) {
	if !strings.EqualFold(section, "DEFAULT") {
		section = strings.ToLower(section)
	} else {
		section = "DEFAULT"
	}
	v, ok := ini[section][strings.ToLower(option)]
	return v, ok
}
