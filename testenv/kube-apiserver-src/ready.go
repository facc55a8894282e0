package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

// runWaitReady polls the server of a state directory until GET /readyz
// returns 200, using the directory's CA and token. It gives up at the
// timeout, or as soon as one of the watched processes has exited.
func runWaitReady(args []string) error {
	flags := pflag.NewFlagSet("wait-ready", pflag.ContinueOnError)
	dir := flags.String("state-dir", "", "state directory given to serve")
	timeout := flags.Duration("timeout", 90*time.Second, "give up after this long")
	watch := flags.IntSlice("watch-pid", nil, "fail early once this process has exited (repeatable)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("--state-dir is required")
	}
	deadline := time.Now().Add(*timeout)
	last := "nothing tried yet"
	for {
		for _, pid := range *watch {
			if !processRunning(pid) {
				return fmt.Errorf("process %d exited before the server was ready (last: %s)", pid, last)
			}
		}
		ok, why := readyzOK(*dir)
		if ok {
			return nil
		}
		last = why
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (last: %s)", *timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processRunning: the process exists and is not a zombie.
func processRunning(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	rest := string(stat)
	if i := strings.LastIndex(rest, ") "); i >= 0 {
		rest = rest[i+2:]
	}
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func readyzOK(dir string) (bool, string) {
	serverURL, err := os.ReadFile(filepath.Join(dir, "server-url"))
	if err != nil {
		return false, "server-url not written yet"
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return false, err.Error()
	}
	token, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return false, err.Error()
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return false, "ca.crt holds no certificate"
	}
	client := &http.Client{
		Timeout:   3 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	req, err := http.NewRequest(http.MethodGet, strings.TrimSpace(string(serverURL))+"/readyz", nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode == http.StatusOK {
		return true, ""
	}
	return false, fmt.Sprintf("/readyz: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
}
