//! The real `cloudpods operator` binary as a child process of a test, and the nodes file
//! that points it at a private sshd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cloudpods::proxmox::ssh::SshNode;

use super::operator::{TEST_LABEL, state_dir};
use super::ssh::PrivateSshd;

/// The log line of an operator whose endpoint is up (every part spawned).
const READY_LINE: &str = "operator endpoint listening";

/// How every incarnation of the operator is started.
pub struct OperatorConfig {
    pub database_url: String,
    pub kubeconfig: String,
    pub namespace: String,
    pub label: String,
    pub nodes_file: PathBuf,
    pub log_dir: PathBuf,
    /// Flags after the common ones (later flags win).
    pub extra_args: Vec<String>,
}

/// One `cloudpods operator` process; killed (SIGKILL) on drop if it still runs, so no
/// process outlives the test, panic or not.
pub struct OperatorProc {
    pub child: Child,
    pub log: PathBuf,
    pub spawned: Instant,
}

impl OperatorProc {
    pub fn spawn(cfg: &OperatorConfig, name: &str) -> OperatorProc {
        let log = cfg.log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create the operator log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudpods"));
        // Only the flags below configure it: drop any setting inherited from the environment.
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && (k.starts_with("CLOUDPODS_") || k == "DATABASE_URL")
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("CLOUDPODS_LOG", "info")
            .env("CLOUDPODS_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .args(["operator", "--listen", "127.0.0.1:0"])
            .arg("--database-url")
            .arg(&cfg.database_url)
            .arg("--kubeconfig")
            .arg(&cfg.kubeconfig)
            .arg("--watch-namespace")
            .arg(&cfg.namespace)
            .arg("--label-selector")
            .arg(format!("{TEST_LABEL}={}", cfg.label))
            .arg("--nodes-file")
            .arg(&cfg.nodes_file)
            .args([
                "--placement",
                "spread",
                "--lease",
                "3s",
                "--poll-interval",
                "300ms",
                "--retry-base",
                "100ms",
                "--retry-max",
                "1s",
                "--error-retry",
                "2s",
                "--sync-interval",
                "30s",
                "--agent-wait",
                "5s",
                "--gc-interval",
                "3s",
            ])
            .args(&cfg.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("spawn cloudpods operator");
        OperatorProc {
            child,
            log,
            spawned: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The endpoint is bound only after the database, Kubernetes and the nodes file were
    /// accepted and every part was spawned.
    pub fn is_ready(&self) -> bool {
        self.log_text().contains(READY_LINE)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, with its timestamp.
    pub fn log_line(&self, needle: &str) -> Option<(DateTime<Utc>, String)> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains(needle))?;
        let stamp = line.split_whitespace().next()?;
        let at = DateTime::parse_from_rfc3339(stamp)
            .ok()?
            .with_timezone(&Utc);
        Some((at, line.to_string()))
    }

    /// Waits until the log contains `needle` (panics with the log if the process exits or
    /// time runs out).
    pub async fn wait_log(&mut self, needle: &str, within: Duration) -> (DateTime<Utc>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.log_line(needle) {
                return found;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log of pid {} within {within:?}:\n{}",
                self.pid(),
                tail(&self.log, 60)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Panics (with the log) if the process exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the operator (pid {}) exited by itself with {status}:\n{}",
                self.pid(),
                tail(&self.log, 60)
            );
        }
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        self.wait_log(READY_LINE, within).await;
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) -> ExitStatus {
        self.assert_running();
        self.child.kill().expect("SIGKILL the operator");
        self.child.wait().expect("reap the operator")
    }

    /// SIGTERM and wait for the graceful exit; SIGKILL after `within`.
    pub async fn terminate(mut self, within: Duration) -> Result<ExitStatus, String> {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -TERM {pid} failed: {sent}"));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the operator did not stop within {within:?} of SIGTERM:\n{}",
                    tail(&self.log, 40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OperatorProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `*.log` files in `dir`, sorted by name.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    logs
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!(
        "---- {} (last {} of {} lines) ----\n{}",
        path.display(),
        lines.len() - from,
        lines.len(),
        lines[from..].join("\n")
    )
}

/// The nodes file of the private sshd: one entry per node, its state dir as the job dir,
/// with the simulator's fault knobs `faults` (JSON) written on every node.
pub async fn write_nodes_file(sshd: &PrivateSshd, nodes: &[&str], faults: &str, path: &Path) {
    let mut yaml = format!(
        "defaults:\n  port: {}\n  keyFile: {}\n  knownHostsFile: {}\n  connectTimeoutSeconds: 10\nnodes:\n",
        sshd.port,
        sshd.dir().join("client_ed25519").display(),
        sshd.dir().join("known_hosts").display(),
    );
    for &node in nodes {
        let ssh = SshNode::new(sshd.settings(node));
        let dir = state_dir(&ssh).await;
        assert!(!dir.is_empty(), "{node}: PVE_SIM_STATE is empty");
        let out = ssh
            .exec(
                &format!("printf '%s' '{faults}' > \"$PVE_SIM_STATE/faults.json\""),
                None,
                Duration::from_secs(20),
            )
            .await
            .expect("write faults.json");
        assert_eq!(
            out.exit_status,
            Some(0),
            "{node}: writing faults.json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        yaml.push_str(&format!(
            "  - name: {node}\n    host: 127.0.0.1\n    user: {}\n    jobDir: {dir}\n",
            sshd.user(node)
        ));
    }
    std::fs::write(path, yaml).expect("write the nodes file");
}
