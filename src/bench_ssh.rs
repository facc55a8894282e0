//! `cloudpods bench-ssh`: throughput of `qm status <vmid>` over one pooled SSH connection
//! versus a new connection per command, at several concurrency levels.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::BenchSshArgs;
use crate::proxmox::argv::Argv;
use crate::proxmox::ssh::{SshNode, SshSettings};
use crate::proxmox::types::Vmid;

/// How commands reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One [`SshNode`] (one connection, many channels) shared by every caller.
    Pooled,
    /// A fresh connection (connect, authenticate, exec, disconnect) for every command.
    PerCommand,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Pooled => "pooled",
            Mode::PerCommand => "per-command",
        })
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Connection mode.
    pub mode: Mode,
    /// Concurrent callers.
    pub callers: usize,
    /// Commands that succeeded.
    pub ops: u64,
    /// Commands that failed (transport error or non-zero exit).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency of successful commands.
    pub p50: Duration,
    /// 99th percentile latency of successful commands.
    pub p99: Duration,
}

impl BenchResult {
    /// Successful commands per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} callers={:<3} ops={:<7} errors={:<4} ops/s={:>8.1}  p50={:>7.1}ms  p99={:>7.1}ms",
            self.mode.to_string(),
            self.callers,
            self.ops,
            self.errors,
            self.ops_per_sec(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
        )
    }
}

/// Runs `qm status <vmid>` for `duration` with `callers` concurrent loops.
pub async fn measure(
    settings: &SshSettings,
    vmid: Vmid,
    mode: Mode,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<BenchResult> {
    let command = Argv::new("qm")
        .arg("status")
        .arg(vmid.to_string())
        .to_shell_command()?;
    let timeout = Duration::from_secs(30);
    let pooled = Arc::new(SshNode::new(settings.clone()));
    if mode == Mode::Pooled {
        // Connect before the clock starts: the pooled figure is the steady state.
        let out = pooled.exec(&command, None, timeout).await?;
        anyhow::ensure!(
            out.success(),
            "qm status {vmid} failed: {}",
            out.stderr_lossy().trim()
        );
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers.max(1) {
        let pooled = pooled.clone();
        let settings = settings.clone();
        let command = command.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match mode {
                    Mode::Pooled => pooled.exec(&command, None, timeout).await,
                    Mode::PerCommand => {
                        let node = SshNode::new(settings.clone());
                        let r = node.exec(&command, None, timeout).await;
                        node.close().await;
                        r
                    }
                };
                match result {
                    Ok(out) if out.success() => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    pooled.close().await;
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            Duration::ZERO
        } else {
            let i = ((latencies.len() - 1) as f64 * p).round() as usize;
            latencies[i.min(latencies.len() - 1)]
        }
    };
    Ok(BenchResult {
        mode,
        callers,
        ops: latencies.len() as u64,
        errors,
        elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
    })
}

/// The subcommand: every mode × concurrency level, printed as it completes.
pub async fn run(args: &BenchSshArgs) -> anyhow::Result<Vec<BenchResult>> {
    let mut settings = SshSettings::new(
        args.host.clone(),
        args.port,
        args.user.clone(),
        args.key.clone(),
        args.known_hosts.clone(),
    );
    settings.max_sessions = args.max_sessions;
    if args.bare {
        settings.remote_kill_grace = None;
    }
    let vmid = Vmid::new(args.vmid)?;
    println!(
        "qm status {vmid} on {}@{}:{} for {:?} per run (pooled: one connection, at most {} channels; remote deadline {})",
        args.user,
        args.host,
        args.port,
        args.duration,
        args.max_sessions,
        if args.bare { "off" } else { "on" }
    );
    let mut results = Vec::new();
    for mode in [Mode::Pooled, Mode::PerCommand] {
        for &callers in &args.concurrency {
            let r = measure(&settings, vmid, mode, callers, args.duration).await?;
            println!("{r}");
            results.push(r);
        }
    }
    for &callers in &args.concurrency {
        let rate = |m: Mode| {
            results
                .iter()
                .find(|r| r.mode == m && r.callers == callers)
                .map_or(0.0, BenchResult::ops_per_sec)
        };
        let per = rate(Mode::PerCommand);
        if per > 0.0 {
            println!(
                "callers={callers:<3} pooled/per-command = {:.1}x",
                rate(Mode::Pooled) / per
            );
        }
    }
    Ok(results)
}
