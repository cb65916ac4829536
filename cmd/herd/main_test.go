package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestDemoCrashesAndRestartsASession(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := run(ctx, []string{"demo", "-sessions", "3"}, &out, &out); code != 0 {
		t.Fatalf("exit code %d\n%s", code, out.String())
	}
	text := out.String()
	crashed := regexp.MustCompile(`crashing (game:\d) \((\S+)\) on purpose`).FindStringSubmatch(text)
	if crashed == nil {
		t.Fatalf("no crash in the output:\n%s", text)
	}
	name, before := crashed[1], crashed[2]
	for _, want := range []string{
		"supervisor: " + name + " (" + before + ") exited: crash: panic: game",
		"supervisor: restarted " + name + ": " + before + " -> ",
		name + " answers again as ",
		"node stopped; 0 processes left",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	// The final table lists the restarted session under its new PID.
	last := text[strings.LastIndex(text, "NAME"):]
	if strings.Contains(last, " "+before+" ") || !strings.Contains(last, name) {
		t.Errorf("final table does not show %s under a new PID:\n%s", name, last)
	}
}

func TestDemoKeepsCrashingUntilDuration(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, []string{"demo", "-sessions", "2", "-crash-every", "100ms", "-duration", "450ms"}, &out, &out)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, out.String())
	}
	if n := strings.Count(out.String(), "answers again as"); n < 2 {
		t.Fatalf("%d restarts shown, want several:\n%s", n, out.String())
	}
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage:"},
		{[]string{"help"}, 0, "herd demo"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"demo", "-sessions", "0"}, 2, "-sessions must be between"},
		{[]string{"demo", "-crash-every", "-1s"}, 2, "must not be negative"},
		{[]string{"demo", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"demo", "-h"}, 0, "Usage: herd demo"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("herd %v: exit %d, output %q; want exit %d and %q", tc.args, code, out.String(), tc.code, tc.want)
		}
	}
}

// Ctrl-C (the context ending) stops the demo cleanly.
func TestDemoStopsOnInterrupt(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"demo", "-crash-every", "1h"}, &out, &out) }()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit code %d after interrupt\n%s", code, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop after interrupt")
	}
}
