// Package agent lets patch-ctl load a live fix (a Go plugin built by patch-build) into this program.
//
// A program imports it with one line:
//
//	import _ "patchbuild.local/go/agent"
//
// It listens on a unix socket, $TMPDIR/patchbuild-go.PID/agent.sock, in a directory only the program's
// user may enter (0700). A request is one line, "open PATH"; the agent calls plugin.Open(PATH) and answers
// one line: "ok" or "error: TEXT". Nothing else runs in the program: the jumps into the plugin's code are
// written by patch-ctl with ptrace, every thread stopped. The plugin goes through plugin.Open so that the
// runtime registers its code (pclntab, stack maps, types): stack growth, GC and tracebacks work in it.
package agent

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"plugin"
	"strings"
	"syscall"
	"time"
)

const maxRequest = 4096

// Dir is where the socket lives for the process pid.
func Dir(pid int) string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("patchbuild-go.%d", pid))
}

func init() {
	dir := Dir(os.Getpid())
	os.RemoveAll(dir) // a process of the same PID before us left it
	if err := os.Mkdir(dir, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "patchbuild agent: %v\n", err)
		return
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "patchbuild agent: %v\n", err)
		return
	}
	go serve(ln.(*net.UnixListener))
}

func serve(ln *net.UnixListener) {
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		handle(conn)
	}
}

// allowed: the peer runs as our user or as root.
func allowed(conn *net.UnixConn) bool {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	return err == nil && (cred.Uid == 0 || int(cred.Uid) == os.Getuid())
}

func handle(conn *net.UnixConn) {
	defer conn.Close()
	if !allowed(conn) {
		fmt.Fprintln(conn, "error: permission denied")
		return
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(conn, maxRequest).ReadSlice('\n') // bounded: ErrBufferFull past it
	if err != nil {
		fmt.Fprintln(conn, "error: bad request")
		return
	}
	req := strings.TrimSuffix(string(line), "\n")
	path := strings.TrimPrefix(req, "open ")
	if path == req || path == "" {
		fmt.Fprintln(conn, "error: bad request (expected: open PATH)")
		return
	}
	if _, err := plugin.Open(path); err != nil {
		fmt.Fprintf(conn, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	fmt.Fprintln(conn, "ok")
}
