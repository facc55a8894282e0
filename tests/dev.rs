//! `cloudpods dev --exit-when-active`, the real binary, end to end: its own test environment
//! (testenv/up into a temporary state directory, beside the one the other tests use), the
//! operator and API in-process, the sample CloudPods to Active, the printed instructions, and
//! nothing of it left running afterwards.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// PIDs in `(pid N)` of the line starting with `stopped:`.
fn stopped_pids(stdout: &str) -> Vec<(String, u32)> {
    let line = stdout
        .lines()
        .filter_map(|l| l.split_once("] stopped: ").map(|(_, rest)| rest))
        .next_back()
        .unwrap_or_else(|| panic!("no `stopped:` line in:\n{stdout}"));
    line.split(", ")
        .filter_map(|part| {
            let (name, rest) = part.split_once(" (pid ")?;
            Some((name.to_string(), rest.trim_end_matches(')').parse().ok()?))
        })
        .collect()
}

/// Clock ticks since boot now (`/proc/uptime` × `getconf CLK_TCK`).
fn ticks_now() -> u64 {
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (up * hz) as u64
}

/// Start time of `pid` in clock ticks since boot (None: no such process, or a zombie).
fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    if f[0] == "Z" || f[0] == "X" {
        return None;
    }
    f[19].parse().ok()
}

/// Every running process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// The `stopped:` line names the environment's processes, none of them still runs (`ended`:
/// clock ticks when `cloudpods dev` exited), and nothing mentions the state directory.
fn assert_all_stopped(stdout: &str, ended: u64, state_path: &str) {
    let stopped = stopped_pids(stdout);
    let names: Vec<&str> = stopped.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["etcd", "kube-apiserver", "postgres", "sshd"] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    for (name, pid) in &stopped {
        // A process with that PID started before `cloudpods dev` ended is the one it started
        // (a later one got the PID reused).
        if let Some(at) = started_at(*pid) {
            assert!(at > ended, "{name} (pid {pid}) still runs");
        }
    }
    let left = processes_mentioning(state_path);
    assert!(left.is_empty(), "still running: {left:#?}");
}

/// The simulator binary, a state directory and its path; None (skip) with an external
/// cluster: the sandbox always builds and runs its own API server, which may not be built on
/// such a machine.
fn sandbox_inputs() -> Option<(String, tempfile::TempDir, String)> {
    if std::env::var_os("TEST_KUBECONFIG").is_some() {
        eprintln!("skipped: TEST_KUBECONFIG is set (the sandbox uses its own API server)");
        return None;
    }
    let sim = std::env::var("CLOUDPODS_PVE_SIM_BIN").unwrap_or_else(|_| {
        panic!(
            "CLOUDPODS_PVE_SIM_BIN is not set: run through scripts/test (cargo build -p pve-sim)"
        )
    });
    let state = tempfile::tempdir().unwrap();
    let state_path = state.path().to_str().unwrap().to_string();
    Some((sim, state, state_path))
}

/// `cloudpods dev` on free ports (CI runs other servers, and maybe a sandbox, on this
/// machine) with its own state directory, this repository and the simulator `sim`.
fn dev_command(sim: &str, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudpods"));
    cmd.args(["dev", "--timeout", "3m"])
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--repo-root")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--pve-sim-bin")
        .arg(sim);
    cmd
}

#[test]
fn sandbox_reaches_active_and_stops_everything() {
    let Some((sim, state, state_path)) = sandbox_inputs() else {
        return;
    };
    let t0 = Instant::now();
    let out = dev_command(&sim, state.path())
        .arg("--exit-when-active")
        .env("CLOUDPODS_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cloudpods dev");
    let ended = ticks_now();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "cloudpods dev took {:.1} s\n--- stdout\n{stdout}--- stderr\n{stderr}",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "cloudpods dev failed: {}", out.status);

    // The last table: the three samples, Active, each with a VMID, a node and an address.
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .rposition(|l| l.starts_with("NAME "))
        .expect("a table");
    let rows = &lines[header + 1..header + 4];
    for row in rows {
        // From the right: PHASE VMID NODE IP AGE (VIA may be two words).
        let f: Vec<&str> = row.split_whitespace().rev().collect();
        assert_eq!(f[4], "Active", "{row}");
        assert!(f[3].parse::<u32>().is_ok(), "VMID in {row}");
        assert!(f[2] == "pve1" || f[2] == "pve2", "node in {row}");
        assert!(f[1].parse::<std::net::Ipv4Addr>().is_ok(), "IP in {row}");
    }
    assert!(rows.iter().any(|r| r.contains("REST API")), "{stdout}");
    assert_eq!(rows.iter().filter(|r| r.contains("manifest")).count(), 2);
    assert!(stdout.contains("sandbox ready in "), "{stdout}");

    // How to talk to it.
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .expect("a KUBECONFIG line");
    assert!(kubeconfig.starts_with(&state_path), "{kubeconfig}");
    assert!(
        Path::new(kubeconfig).is_file(),
        "{kubeconfig} is kept after the run"
    );
    let token = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("a TOKEN line");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(stdout.contains("kubectl get cloudpods -A"));
    assert!(stdout.contains("Authorization: Bearer $TOKEN"));
    assert!(stdout.contains("psql postgres://"));
    // The operator's and the API's logs went to the run's log file, not the terminal.
    assert!(!stderr.contains(" INFO "), "logs on stderr:\n{stderr}");
    let log = stdout
        .lines()
        .find_map(|l| l.strip_prefix("logs:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a logs line");
    let log_text = std::fs::read_to_string(log).expect("the log file");
    assert!(log_text.contains("pod admitted"), "API log in {log}");

    // Everything it started is gone.
    assert_all_stopped(&stdout, ended, &state_path);
}

/// Closing the terminal (SIGHUP) while the sandbox runs stops everything it started, like
/// Ctrl-C, and `cloudpods dev` exits 0.
#[test]
fn sighup_stops_everything() {
    use std::io::BufRead as _;
    let Some((sim, state, state_path)) = sandbox_inputs() else {
        return;
    };
    let mut child = dev_command(&sim, state.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run cloudpods dev");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // The first run may build the Kubernetes API server (up to 20 minutes).
    let deadline = Instant::now() + std::time::Duration::from_secs(30 * 60);
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("sandbox ready in ") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let signal = if ready { "-HUP" } else { "-TERM" };
    // Not ready: it may have failed and exited already, so kill's own result does not count.
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(!ready || sent.success(), "kill {signal} {pid}");
    let status = child.wait().expect("wait for cloudpods dev");
    let ended = ticks_now();
    let stdout = reader.join().unwrap();
    eprintln!("--- stdout\n{stdout}");
    assert!(
        ready,
        "no `sandbox ready` line (exited, or not within 30 minutes)"
    );
    assert!(status.success(), "cloudpods dev after SIGHUP: {status}");
    assert!(stdout.contains("] SIGHUP received"), "{stdout}");

    assert_all_stopped(&stdout, ended, &state_path);
}
