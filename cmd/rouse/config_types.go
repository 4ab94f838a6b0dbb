package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// duration is a time.Duration written in TOML as a Go duration string
// ("30s", "15m", "1h30m") or "0". A bare number is refused because
// BurntSushi/toml would read `idle_timeout = 300` as 300ns, which nobody means.
type duration time.Duration

// UnmarshalText parses a Go duration; see the type's comment.
func (d *duration) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "0" {
		*d = 0
		return nil
	}
	if s != "" && isDigits(strings.TrimPrefix(s, "-")) {
		return fmt.Errorf("invalid duration %s: needs a unit, e.g. %q", s, s+"s")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`invalid duration %q: want a number and a unit (ms, s, m, h), e.g. "90s" or "1h30m"`, s)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	*d = duration(v)
	return nil
}

// byteSize is a number of bytes written as an integer or as a string with a
// unit: "100B", "10MB", "1GB" (powers of 1000), "512KiB", "1MiB", "2GiB"
// (powers of 1024). The empty string is 0.
type byteSize int64

// sizeUnits lists the units byteSize accepts, matched case-insensitively.
var sizeUnits = []struct {
	name string
	mult int64
}{
	{"", 1}, {"B", 1},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
}

// UnmarshalText parses a size; see the type's comment.
func (z *byteSize) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*z = 0
		return nil
	}
	if strings.HasPrefix(s, "-") {
		return fmt.Errorf("invalid size %q: must not be negative", s)
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	bad := fmt.Errorf(`invalid size %q: want bytes or a number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. "512KiB"`, s)
	if num == "" {
		return bad
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return fmt.Errorf("invalid size %q: too large", s)
	}
	for _, u := range sizeUnits {
		if !strings.EqualFold(unit, u.name) {
			continue
		}
		if n > math.MaxInt64/u.mult {
			return fmt.Errorf("invalid size %q: too large", s)
		}
		*z = byteSize(n * u.mult)
		return nil
	}
	return bad
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// The as* functions turn a value decoded by BurntSushi/toml into `any`
// (string, int64, float64, bool, time.Time, []any, map[string]any,
// []map[string]any) into the type a key wants, with an error that names
// what was found instead.

func asString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", wrongType("a string", v)
	}
	return s, nil
}

func asStrings(v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		if _, ok := v.(string); ok {
			return nil, fmt.Errorf(`expected an array of strings, got string %q: write [%q]`, v, v)
		}
		return nil, wrongType("an array of strings", v)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("expected an array of strings, got %s at index %d", describe(e), i)
		}
		out[i] = s
	}
	return out, nil
}

func asInt(v any) (int64, error) {
	n, ok := v.(int64)
	if !ok {
		return 0, wrongType("an integer", v)
	}
	return n, nil
}

func asBool(v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, wrongType("true or false", v)
	}
	return b, nil
}

func asDuration(v any) (time.Duration, error) {
	var text string
	switch x := v.(type) {
	case string:
		text = x
	case int64:
		text = strconv.FormatInt(x, 10)
	default:
		return 0, wrongType(`a duration such as "30s"`, v)
	}
	var d duration
	err := d.UnmarshalText([]byte(text))
	return time.Duration(d), err
}

func asSize(v any) (int64, error) {
	var text string
	switch x := v.(type) {
	case string:
		text = x
	case int64:
		text = strconv.FormatInt(x, 10)
	default:
		return 0, wrongType(`a size such as "1MiB"`, v)
	}
	var z byteSize
	err := z.UnmarshalText([]byte(text))
	return int64(z), err
}

func asTable(v any) (map[string]any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, wrongType("a table", v)
	}
	return m, nil
}

func wrongType(want string, got any) error {
	return fmt.Errorf("expected %s, got %s", want, describe(got))
}

// describe names a decoded TOML value for an error message: its TOML type and,
// for a scalar, the value.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			x = x[:40] + "..."
		}
		return fmt.Sprintf("string %q", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case time.Time:
		return "datetime"
	case []any:
		return "array"
	case []map[string]any:
		return "array of tables"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// errRange builds the message of a number outside its allowed range.
func errRange(n, lo, hi int64) error {
	if hi == math.MaxInt64 {
		return fmt.Errorf("must be at least %d, got %d", lo, n)
	}
	return fmt.Errorf("%d is out of range %d-%d", n, lo, hi)
}

var errEmpty = errors.New("must not be empty")
