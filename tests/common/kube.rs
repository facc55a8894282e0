//! Helpers for tests against the real Kubernetes API server started by scripts/test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's crds/ directory.
pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// The kubeconfig of the test API server; panics with a clear message when the environment was not started.
pub fn kubeconfig() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "KUBECONFIG is not set: these tests need the test Kubernetes API server; run them through scripts/test (see README)"
        ),
    }
}

/// A fresh namespace name for one test (the CRD-only server does not check namespaces, and a real cluster gets it created).
pub fn unique_namespace(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let ns = format!("{prefix}-{}", &id[..10]);
    // On a full cluster the namespace must exist; on the CRD-only server this fails harmlessly.
    let _ = kubectl(&["create", "namespace", &ns]);
    ns
}

/// Runs kubectl against the test server and returns its output.
pub fn kubectl(args: &[&str]) -> Output {
    kubectl_stdin(args, None)
}

/// Runs kubectl with `stdin` as its standard input.
pub fn kubectl_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .expect("kubectl is installed (scripts/test installs it)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("write kubectl stdin");
    }
    child.wait_with_output().expect("kubectl runs")
}

/// Text of both output streams, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs kubectl and panics with its output unless it succeeded.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies a manifest from a string with kubectl (server-side) and returns the output.
pub fn apply(namespace: &str, manifest: &str) -> Output {
    kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=cloudpods-test",
            "-n",
            namespace,
            "-f",
            "-",
        ],
        Some(manifest),
    )
}

/// Installs the CRDs from crds/ and waits until they are Established.
pub fn ensure_crds() {
    let dir = crd_dir();
    let dir = dir.to_str().expect("utf-8 path");
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=cloudpods-test",
        "-f",
        dir,
    ]);
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        dir,
    ]);
}
