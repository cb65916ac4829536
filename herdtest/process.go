package herdtest

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Process is an OS process a test started, such as one node of a cluster
// whose nodes run as separate processes: its stdout is read line by line
// (WaitLine), its stderr kept for the test's log if the test fails, and
// it is killed when the test ends if it still runs.
type Process struct {
	Name string
	Cmd  *exec.Cmd

	lines  chan string
	stderr *lockedBuffer
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartProcess starts cmd (its Stdout and Stderr must be unset). Up to
// 4096 lines of stdout wait for WaitLine; a process that prints more
// without being read blocks.
func StartProcess(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: cmd, lines: make(chan string, 4096), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("herdtest: %s: %v", name, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("herdtest: start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s's stderr (last lines):\n%s", name, tail(p.stderr.String(), 80))
		}
	})
	return p
}

// ReexecCommand returns a command that runs this test binary again with
// env set (a "NAME=value" pair) and args: a TestMain that sees env runs
// the program under test instead of the tests.
func ReexecCommand(env string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env)
	return cmd
}

// WaitLine waits for a line of stdout starting with prefix, skipping
// others, and returns the rest of it.
func (p *Process) WaitLine(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("herdtest: %s ended before printing %q; stderr:\n%s", p.Name, prefix, tail(p.stderr.String(), 40))
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return rest
			}
		case <-deadline:
			t.Fatalf("herdtest: %s did not print %q within %v; stderr:\n%s", p.Name, prefix, timeout, tail(p.stderr.String(), 40))
		}
	}
}

// Wait waits until the process exits, and returns how it exited; it fails
// the test if that takes longer than timeout.
func (p *Process) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("herdtest: %s still runs after %v", p.Name, timeout)
		return nil
	}
}

// Stderr returns what the process wrote to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}
