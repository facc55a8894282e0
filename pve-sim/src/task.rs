//! Worker tasks: UPIDs, task logs, output tee, pacing and drop/hang faults.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use crate::err::{CmdError, CmdResult};
use crate::state::Ctx;
use crate::util;

/// A running foreground task.
pub struct Task {
    log: Option<File>,
    active: std::path::PathBuf,
    /// Number of `WARN:` lines.
    pub warnings: u32,
    started: Instant,
    dropped_checked: bool,
}

/// Build a UPID string.
pub fn make_upid(node: &str, ttype: &str, id: &str, start: i64) -> String {
    format!(
        "UPID:{node}:{:08X}:{:08X}:{:08X}:{ttype}:{id}:root@pam:",
        std::process::id(),
        util::proc_start_ticks(),
        start
    )
}

impl Task {
    /// Run `body` as a foreground worker task: take a slot of the long-task semaphore, start
    /// task `ttype` with `id`, and end the task with `body`'s result. A failed task exits
    /// `fail_code` (255, or 0 for commands without an exit-code hook, §0.2).
    pub fn run(
        ctx: &mut Ctx,
        ttype: &str,
        id: &str,
        fail_code: i32,
        body: impl FnOnce(&mut Ctx, &mut Task) -> Result<(), CmdError>,
    ) -> CmdResult {
        ctx.acquire_slot()?;
        let mut task = Task::start(ctx, ttype, id);
        let res = body(ctx, &mut task);
        Ok(task.finish(ctx, res, fail_code))
    }

    /// Start a task of `ttype` with `id`; writes the task log and an active marker.
    pub fn start(ctx: &mut Ctx, ttype: &str, id: &str) -> Task {
        let start = util::now_secs();
        let upid = make_upid(&ctx.node.node, ttype, id, start);
        let sub = format!("{:X}", start & 0xf);
        let dir = ctx.dir.join("tasks").join(sub);
        let _ = fs::create_dir_all(&dir);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(&upid))
            .ok();
        let adir = ctx.dir.join("tasks").join("active");
        let _ = fs::create_dir_all(&adir);
        let active = adir.join(&upid);
        let _ = fs::write(&active, std::process::id().to_string());
        ctx.upid = Some(upid.clone());
        if ctx.task_start_ms.is_none() {
            ctx.task_start_ms = Some(util::now_ms());
        }
        Task {
            log,
            active,
            warnings: 0,
            started: Instant::now(),
            dropped_checked: false,
        }
    }

    /// Print a task output line on stdout and into the task log.
    /// A broken stdout (dropped SSH channel) aborts the task like SIGTERM does.
    pub fn say(&mut self, line: &str) -> Result<(), CmdError> {
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Err(CmdError::die("interrupted by signal"));
        }
        Ok(())
    }

    /// A `WARN: ` line (counted).
    pub fn warn(&mut self, msg: &str) -> Result<(), CmdError> {
        self.warnings += 1;
        self.say(&format!("WARN: {msg}"))
    }

    /// Spend `total_ms` printing `lines` evenly; honours hang and drop knobs.
    pub fn work(&mut self, ctx: &mut Ctx, total_ms: u64, lines: &[String]) -> Result<(), CmdError> {
        if ctx.faults.hangs(&ctx.key) {
            crate::log_invocation(&ctx.dir, Some(ctx), None, "hang");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let steps = lines.len().max(1) as u64;
        let per = total_ms / steps;
        for i in 0..steps {
            self.sleep_checked(ctx, per)?;
            if let Some(l) = lines.get(i as usize) {
                self.say(l)?;
            }
        }
        if !self.dropped_checked && ctx.faults.drop_for(&ctx.key).is_some() {
            self.do_drop(ctx)?;
        }
        Ok(())
    }

    /// A silent work phase: spend `durations_ms` of `key`, then raise the injected in-task
    /// failure, if any.
    pub fn run_phase(&mut self, ctx: &mut Ctx, key: &str) -> Result<(), CmdError> {
        let d = ctx.faults.duration(key);
        self.work(ctx, d, &[])?;
        ctx.fail_task()
    }

    /// Spend `total_ms` printing `lines` in two halves, raising the injected in-task failure,
    /// if any, halfway through (vzdump and qmrestore data transfer).
    pub fn work_split(
        &mut self,
        ctx: &mut Ctx,
        total_ms: u64,
        lines: &[String],
    ) -> Result<(), CmdError> {
        let half = lines.len() / 2;
        self.work(ctx, total_ms / 2, &lines[..half])?;
        ctx.fail_task()?;
        self.work(ctx, total_ms - total_ms / 2, &lines[half..])
    }

    fn sleep_checked(&mut self, ctx: &mut Ctx, ms: u64) -> Result<(), CmdError> {
        let end = Instant::now() + Duration::from_millis(ms);
        loop {
            if !self.dropped_checked
                && let Some(d) = ctx.faults.drop_for(&ctx.key)
                && self.started.elapsed() >= Duration::from_millis(d.after_ms)
            {
                self.do_drop(ctx)?;
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }

    fn do_drop(&mut self, ctx: &mut Ctx) -> Result<(), CmdError> {
        self.dropped_checked = true;
        let Some(d) = ctx.faults.drop_for(&ctx.key).cloned() else {
            return Ok(());
        };
        if d.hup_parent {
            util::send_signal(util::session_pid(), 1);
        }
        if d.effect == "abort_with_cleanup" {
            return Err(CmdError::die("interrupted by signal"));
        }
        crate::log_invocation(&ctx.dir, Some(ctx), None, "dropped");
        // Die like a task child killed by SIGPIPE/SIGKILL: no cleanup, no task end line.
        util::send_signal(std::process::id() as i32, 9);
        std::process::exit(255)
    }

    /// End the task. `Ok` → `TASK OK`/`TASK WARNINGS`; `Err` → `TASK ERROR: ...`,
    /// message (newlines folded) on stderr, exit `fail_code`.
    pub fn finish(mut self, ctx: &mut Ctx, res: Result<(), CmdError>, fail_code: i32) -> i32 {
        let _ = fs::remove_file(&self.active);
        ctx.release_slot();
        let warn_knob = ctx.faults.task_warnings.get(&ctx.key).copied().unwrap_or(0);
        match res {
            Ok(()) => {
                for i in 0..warn_knob {
                    let _ = self.warn(&format!("simulated warning {}", i + 1));
                }
                if self.warnings > 0 {
                    let n = self.warnings;
                    if let Some(f) = self.log.as_mut() {
                        let _ = writeln!(f, "TASK WARNINGS: {n}");
                    }
                    crate::errln(&format!("Task finished with {n} warning(s)!"));
                } else if let Some(f) = self.log.as_mut() {
                    let _ = writeln!(f, "TASK OK");
                }
                0
            }
            Err(e) => {
                let msg = e.msg.trim_end().replace('\n', " ");
                if let Some(f) = self.log.as_mut() {
                    let _ = writeln!(f, "TASK ERROR: {msg}");
                }
                crate::errln(&msg);
                fail_code
            }
        }
    }
}
