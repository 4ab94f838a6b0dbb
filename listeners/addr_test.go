package listeners

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	long := "/" + strings.Repeat("a", maxUnixPath-1)
	tests := []struct {
		in      string
		want    Addr
		wantErr string // substring of the error; "" = must succeed
	}{
		{in: "127.0.0.1:8001", want: Addr{TCP, "127.0.0.1:8001"}},
		{in: "[::1]:8001", want: Addr{TCP, "[::1]:8001"}},
		{in: "localhost:80", want: Addr{TCP, "localhost:80"}},
		{in: ":8080", want: Addr{TCP, ":8080"}},
		{in: "0.0.0.0:0", want: Addr{TCP, "0.0.0.0:0"}},
		{in: "[::]:65535", want: Addr{TCP, "[::]:65535"}},
		{in: "[fe80::1%eth0]:80", want: Addr{TCP, "[fe80::1%eth0]:80"}},
		{in: "[127.0.0.1]:080", want: Addr{TCP, "127.0.0.1:80"}},
		{in: "my-host_1.example.com:443", want: Addr{TCP, "my-host_1.example.com:443"}},
		{in: "unix:/run/x.sock", want: Addr{Unix, "/run/x.sock"}},
		{in: "unix:" + long, want: Addr{Unix, long}},
		{in: "systemd:blog", want: Addr{Systemd, "blog"}},
		{in: "systemd:rouse.socket", want: Addr{Systemd, "rouse.socket"}},
		{in: "systemd:80", want: Addr{Systemd, "80"}},
		{in: "systemd:" + strings.Repeat("n", 255), want: Addr{Systemd, strings.Repeat("n", 255)}},

		{in: "", wantErr: `parse address "": empty address`},
		{in: "localhost", wantErr: `parse address "localhost": missing port in address`},
		{in: "localhost:", wantErr: `parse address "localhost:": missing port`},
		{in: "127.0.0.1", wantErr: "missing port in address"},
		{in: "::1:80", wantErr: "too many colons: write an IPv6 address as [ADDR]:PORT"},
		{in: "[::1]", wantErr: "missing port in address"},
		{in: "host:http", wantErr: `port "http" is not a decimal number`},
		{in: "host:+80", wantErr: `port "+80" is not a decimal number`},
		{in: "host:-1", wantErr: `port "-1" is not a decimal number`},
		{in: "host:65536", wantErr: "port 65536 is out of range 0-65535"},
		{in: "host:99999999999999999999", wantErr: "port 99999999999999999999 is out of range 0-65535"},
		{in: "bad host:80", wantErr: `invalid host "bad host": not an IP address or host name`},
		{in: "1.2.3.4%eth0:80", wantErr: `invalid host "1.2.3.4%eth0"`},
		{in: "[fe80::1%]:80", wantErr: `invalid host "fe80::1%"`},
		{in: "unx:/run/x.sock", wantErr: `unknown prefix "unx:": want unix:PATH, systemd:NAME or HOST:PORT`},
		{in: "unix:", wantErr: `parse address "unix:": empty unix socket path`},
		{in: "unix:run/x.sock", wantErr: `unix socket path "run/x.sock" is not absolute`},
		{in: "unix:@abstract", wantErr: `unix socket path "@abstract" is not absolute`},
		{in: "unix:/run/\x00x", wantErr: "contains a NUL byte"},
		{in: "unix:" + long + "b", wantErr: "unix socket path is 108 bytes long; the limit is 107"},
		{in: "systemd:", wantErr: `parse address "systemd:": empty systemd socket name`},
		{in: "systemd:a:b", wantErr: `systemd socket name "a:b" contains ':', the LISTEN_FDNAMES separator`},
		{in: "systemd:a b", wantErr: `systemd socket name "a b" contains byte 0x20 at offset 1`},
		{in: "systemd:a\tb", wantErr: "contains byte 0x09 at offset 1"},
		{in: "systemd:caf\u00e9", wantErr: "contains byte 0xc3 at offset 3"},
		{in: "systemd:x\x7f", wantErr: "contains byte 0x7f"},
		{in: "systemd:" + strings.Repeat("n", 256), wantErr: "systemd socket name is 256 bytes long; the limit is 255"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAddr(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				if got != (Addr{}) {
					t.Errorf("ParseAddr(%q) returned %#v with its error; want the zero Addr", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAddr(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseAddr(%q) = %#v; want %#v", tt.in, got, tt.want)
			}
			again, err := ParseAddr(got.String())
			if err != nil || again != got {
				t.Fatalf("ParseAddr(%q.String() = %q) = %#v, %v; want %#v", tt.in, got.String(), again, err, got)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{TCP: "tcp", Unix: "unix", Systemd: "systemd", Kind(7): "Kind(7)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q; want %q", int(k), got, want)
		}
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:8001", "[::1]:8001", "localhost:80", ":8080", "[fe80::1%eth0]:0",
		"[1.2.3.4]:080", "unix:/run/x.sock", "unix:rel", "systemd:blog", "systemd:a:b",
		"", ":", "[]:1", "host:65536", "unx:/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddr(s)
		if err != nil {
			return
		}
		again, err := ParseAddr(a.String())
		if err != nil {
			t.Fatalf("ParseAddr(%q) = %#v, whose String %q does not parse: %v", s, a, a.String(), err)
		}
		if again != a {
			t.Fatalf("ParseAddr(%q) = %#v; ParseAddr(%q) = %#v", s, a, a.String(), again)
		}
	})
}

func ExampleParseAddr() {
	for _, s := range []string{"[::1]:8001", "unix:/run/rouse/blog.sock", "systemd:blog", "unix:blog.sock"} {
		a, err := ParseAddr(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Println(a.Kind, a.Address)
	}
	// Output:
	// tcp [::1]:8001
	// unix /run/rouse/blog.sock
	// systemd blog
	// parse address "unix:blog.sock": unix socket path "blog.sock" is not absolute
}
