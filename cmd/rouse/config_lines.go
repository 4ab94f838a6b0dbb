package main

import (
	"strconv"
	"strings"
)

// keyLines maps every key of a TOML document, as keyString writes it, to the
// 1-based line where it first appears: a table header ([apps.blog]), a
// `key = value` line, a dotted key (a.b = 1) or a key inside an inline
// table. Every prefix of a key is recorded too, so [apps.blog] also gives
// "apps". BurntSushi/toml keeps key positions to itself, so semantic
// errors find their line here.
type keyLines map[string]int

// line returns the line of key, else of its longest recorded prefix (the
// enclosing table), else 1.
func (kl keyLines) line(key ...string) int {
	for n := len(key); n > 0; n-- {
		if l, ok := kl[keyString(key[:n])]; ok {
			return l
		}
	}
	return 1
}

// keyString writes a dotted key the way TOML would: bare parts as they are,
// others quoted.
func keyString(parts []string) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('.')
		}
		if isBareKey(p) {
			b.WriteString(p)
		} else {
			b.WriteString(strconv.Quote(p))
		}
	}
	return b.String()
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isBareChar(s[i]) {
			return false
		}
	}
	return true
}

func isBareChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// indexKeys scans a TOML document for its keys. It is meant for documents
// BurntSushi/toml has accepted, but tolerates anything: it always moves
// forward and never fails, it just records less.
func indexKeys(src string) keyLines {
	s := &keyScanner{src: strings.TrimPrefix(src, "\ufeff"), line: 1, keys: keyLines{}}
	var table []string
	for {
		s.skipSpace(true)
		if s.pos >= len(s.src) {
			return s.keys
		}
		start := s.pos
		line := s.line
		if s.src[s.pos] == '[' {
			s.pos++
			if s.peek() == '[' {
				s.pos++
			}
			s.skipSpace(false)
			table = s.key()
			s.record(table, line)
		} else if k := s.key(); len(k) > 0 {
			s.skipSpace(false)
			if s.peek() == '=' {
				s.pos++
				full := append(append([]string(nil), table...), k...)
				s.record(full, line)
				s.value(full)
			}
		}
		s.skipToEOL()
		if s.pos == start {
			s.next()
		}
	}
}

type keyScanner struct {
	src  string
	pos  int
	line int
	keys keyLines
}

func (s *keyScanner) peek() byte {
	if s.pos < len(s.src) {
		return s.src[s.pos]
	}
	return 0
}

// next moves one byte on, counting lines.
func (s *keyScanner) next() {
	if s.pos < len(s.src) {
		if s.src[s.pos] == '\n' {
			s.line++
		}
		s.pos++
	}
}

func (s *keyScanner) record(key []string, line int) {
	for n := 1; n <= len(key); n++ {
		k := keyString(key[:n])
		if _, ok := s.keys[k]; !ok {
			s.keys[k] = line
		}
	}
}

// skipSpace skips blanks and, with newlines set, also line ends and comments.
func (s *keyScanner) skipSpace(newlines bool) {
	for s.pos < len(s.src) {
		switch s.src[s.pos] {
		case ' ', '\t', '\r':
			s.pos++
		case '\n', '#':
			if !newlines {
				return
			}
			if s.src[s.pos] == '#' {
				s.skipToEOL()
				continue
			}
			s.next()
		default:
			return
		}
	}
}

// skipToEOL moves to the next newline (not past it).
func (s *keyScanner) skipToEOL() {
	for s.pos < len(s.src) && s.src[s.pos] != '\n' {
		s.pos++
	}
}

// key reads a possibly dotted, possibly quoted key.
func (s *keyScanner) key() []string {
	var parts []string
	for {
		s.skipSpace(false)
		var p string
		switch c := s.peek(); {
		case c == '"':
			raw := s.str()
			if u, err := strconv.Unquote(raw); err == nil {
				p = u
			} else if len(raw) >= 2 {
				p = raw[1 : len(raw)-1]
			}
		case c == '\'':
			raw := s.str()
			if len(raw) >= 2 {
				p = raw[1 : len(raw)-1]
			}
		case isBareChar(c):
			start := s.pos
			for s.pos < len(s.src) && isBareChar(s.src[s.pos]) {
				s.pos++
			}
			p = s.src[start:s.pos]
		default:
			return parts
		}
		parts = append(parts, p)
		s.skipSpace(false)
		if s.peek() != '.' {
			return parts
		}
		s.pos++
	}
}

// str reads a string of any of TOML's four kinds and returns it as written,
// quotes included.
func (s *keyScanner) str() string {
	start := s.pos
	q := s.src[s.pos]
	delim := string(q)
	if strings.HasPrefix(s.src[s.pos:], strings.Repeat(delim, 3)) {
		delim = strings.Repeat(delim, 3)
	}
	for range len(delim) {
		s.next()
	}
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		switch {
		case c == '\\' && q == '"':
			s.next()
			s.next()
		case c == '\n' && len(delim) == 1:
			return s.src[start:s.pos] // unterminated: stop at the line's end
		case strings.HasPrefix(s.src[s.pos:], delim):
			for range len(delim) {
				s.next()
			}
			// A multi-line string may end with up to two extra quotes.
			for i := 0; len(delim) == 3 && i < 2 && s.peek() == q; i++ {
				s.next()
			}
			return s.src[start:s.pos]
		default:
			s.next()
		}
	}
	return s.src[start:s.pos]
}

// value skips one value, recording the keys of inline tables under prefix.
func (s *keyScanner) value(prefix []string) {
	s.skipSpace(false)
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.pos++
		for {
			s.skipSpace(true)
			c := s.peek()
			if c == ']' {
				s.pos++
				return
			}
			if c == 0 {
				return
			}
			start := s.pos
			s.value(prefix)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.pos++
			}
			if s.pos == start {
				return
			}
		}
	case '{':
		s.pos++
		for {
			s.skipSpace(true)
			c := s.peek()
			if c == '}' {
				s.pos++
				return
			}
			if c == 0 {
				return
			}
			start := s.pos
			line := s.line
			if k := s.key(); len(k) > 0 {
				s.skipSpace(false)
				if s.peek() == '=' {
					s.pos++
					full := append(append([]string(nil), prefix...), k...)
					s.record(full, line)
					s.value(full)
				}
			}
			s.skipSpace(true)
			if s.peek() == ',' {
				s.pos++
			}
			if s.pos == start {
				return
			}
		}
	default:
		for s.pos < len(s.src) && !strings.ContainsRune(" \t\r\n,]}#", rune(s.src[s.pos])) {
			s.pos++
		}
	}
}
