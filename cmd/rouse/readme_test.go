package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every TOML example of the README loads as printed: a config a user
// copies from it gets no file:line error.
func TestREADMEConfigsLoad(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?ms)^( *)```toml\n(.*?)^ *```").FindAllStringSubmatch(string(b), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d TOML examples in the README, want the reference, the first example and more", len(blocks))
	}
	for i, m := range blocks {
		indent, text := m[1], m[2]
		var lines []string
		for line := range strings.Lines(text) {
			lines = append(lines, strings.TrimPrefix(line, indent))
		}
		text = strings.Join(lines, "")
		if !strings.Contains(text, "[apps.") {
			continue
		}
		file := filepath.Join(t.TempDir(), "rouse.toml")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		// As an unprivileged user would load it: no user check, and ports
		// picked from a fixed range.
		next := 21000
		_, err := Load(file, LoadOptions{Euid: 1000, PickPort: func() (int, error) { next++; return next, nil }})
		if err != nil {
			t.Errorf("README TOML example %d does not load: %v\n%s", i+1, err, text)
		}
	}
}
