//! Helpers for tests against a real OpenSSH server in front of simulated Proxmox nodes
//! (`testenv/sshd`).
//!
//! - The **shared** instance is the one `testenv/up` started: its `CLOUDPODS_TEST_SSH_*`
//!   variables come from `DIR/env` (scripts/test sources it). Use it for tests that do not
//!   disturb the server.
//! - A **private** instance ([`PrivateSshd`]) runs in its own temp dir with its own port,
//!   keys and node states, for tests that restart sshd, count connections in its log, or
//!   check that nothing reached a node. It needs root (like `testenv/sshd start`) and the
//!   simulator binary (`CLOUDPODS_PVE_SIM_BIN`, which `DIR/env` also exports).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cloudpods::proxmox::ssh::SshSettings;

fn need(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: these tests need the test sshd in front of pve-sim; run them \
             through scripts/test, or `testenv/up DIR` with CLOUDPODS_PVE_SIM_BIN set (as root) \
             and `. DIR/env` (see testenv/README.md)"
        ),
    }
}

/// The SSH user of a simulated node on the shared instance (`cpsim-pve1` for `pve1`).
pub fn shared_user(node: &str) -> String {
    format!("{}{node}", need("CLOUDPODS_TEST_SSH_USER_PREFIX"))
}

/// The simulated nodes of the shared instance (`pve1`, `pve2`).
pub fn shared_nodes() -> Vec<String> {
    need("CLOUDPODS_TEST_SSH_NODES")
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Settings for `node` on the shared instance (from the `CLOUDPODS_TEST_SSH_*` variables).
pub fn shared_settings(node: &str) -> SshSettings {
    let port = need("CLOUDPODS_TEST_SSH_PORT")
        .parse()
        .expect("CLOUDPODS_TEST_SSH_PORT is not a port number");
    SshSettings::new(
        need("CLOUDPODS_TEST_SSH_HOST"),
        port,
        shared_user(node),
        need("CLOUDPODS_TEST_SSH_KEY"),
        need("CLOUDPODS_TEST_SSH_KNOWN_HOSTS"),
    )
}

/// A client key that the shared instance does not accept.
pub fn shared_wrong_key() -> PathBuf {
    PathBuf::from(need("CLOUDPODS_TEST_SSH_WRONG_KEY"))
}

/// The `testenv/sshd` script.
pub fn sshd_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testenv/sshd")
}

/// `testenv/sshd ACTION DIR`, ready for more arguments.
fn sshd_command(action: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(sshd_script());
    cmd.arg(action).arg(dir);
    cmd
}

fn run_sshd(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run testenv/sshd {what}: {e}"));
    assert!(
        out.status.success(),
        "testenv/sshd {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `testenv/sshd ACTION DIR` (`restart`, `stop`) and panics with its stderr when it
/// fails. Blocking; call it from `spawn_blocking` to keep async tasks running meanwhile.
pub fn sshd_action(action: &str, dir: &Path) {
    run_sshd(sshd_command(action, dir), action);
}

fn sim_bin() -> String {
    if let Ok(v) = std::env::var("CLOUDPODS_PVE_SIM_BIN")
        && !v.is_empty()
    {
        return v;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/pve-sim");
    if built.exists() {
        return built.display().to_string();
    }
    need("CLOUDPODS_PVE_SIM_BIN")
}

/// A private sshd + simulated nodes in a temp dir; stopped (and the dir removed) on drop.
pub struct PrivateSshd {
    dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1), the same across restarts.
    pub port: u16,
    /// The node names.
    pub nodes: Vec<String>,
}

impl PrivateSshd {
    /// Start an instance with these nodes (users `cpsim-<node>`).
    pub fn start(nodes: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cloudpods-sshd-test.")
            .tempdir()
            .expect("create a temp dir");
        let mut start = sshd_command("start", dir.path());
        start
            .arg("--nodes")
            .arg(nodes.join(","))
            .env("CLOUDPODS_PVE_SIM_BIN", sim_bin());
        run_sshd(start, "start (it needs root)");
        let port = std::fs::read_to_string(dir.path().join("port"))
            .expect("read DIR/port")
            .trim()
            .parse()
            .expect("DIR/port holds a port number");
        Self {
            dir,
            port,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SSH user of `node`.
    pub fn user(&self, node: &str) -> String {
        format!("cpsim-{node}")
    }

    /// Settings for `node` with the authorized key and the right known_hosts.
    pub fn settings(&self, node: &str) -> SshSettings {
        SshSettings::new(
            "127.0.0.1",
            self.port,
            self.user(node),
            self.dir().join("client_ed25519"),
            self.dir().join("known_hosts"),
        )
    }

    /// A file in the instance directory (`known_hosts.wrong`, `wrong_client_ed25519`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Restart sshd (same port and keys); every open connection drops. Returns once the
    /// port accepts connections again.
    pub fn restart(&self) {
        sshd_action("restart", self.dir());
        self.wait_accepting(Duration::from_secs(30));
    }

    /// Stop sshd, its connections and everything still running below it.
    pub fn stop(&self) {
        sshd_action("stop", self.dir());
    }

    /// Wait (polling, bounded) until the port accepts TCP connections.
    pub fn wait_accepting(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd on port {} not accepting after {within:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times sshd accepted public-key authentication for `user` (its log).
    pub fn accepted_logins(&self, user: &str) -> usize {
        let log = std::fs::read_to_string(self.dir().join("sshd.log")).unwrap_or_default();
        let needle = format!("Accepted publickey for {user} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }

    /// The lines of `node`'s simulator call log (one per qm/pvesh/... invocation).
    pub fn calls(&self, node: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("nodes").join(node).join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        let out = sshd_command("stop", self.dir()).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "testenv/sshd stop {} failed:\n{}",
                self.dir().display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run testenv/sshd stop: {e}"),
        }
    }
}
