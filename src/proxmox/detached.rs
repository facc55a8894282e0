//! Detached long jobs (§14.4 option b): clone, vzdump and qmrestore run under `setsid` on the
//! node, so a dropped SSH connection cannot kill them, and their exit status stays readable.
//!
//! Layout on the node, for job `J` under base directory `B` (default `/var/tmp`):
//! `B/cloudpods-J.d/` (created with `mkdir`, the atomic "started once" guard), holding `pid`,
//! `log` (stdout and stderr merged) and `rc` (written via `rc.tmp` + `mv`, so it is complete
//! whenever it exists). Starting the same job id again never runs the command twice.

use super::argv::{Command, RemoteCommand, quote};
use super::classify::{Outcome, check};
use super::commands::CommandKind;
use super::error::ProxmoxError;
use super::types::{JobId, RemoteDir};

type Result<T> = std::result::Result<T, ProxmoxError>;

/// How much of the job log a poll returns (the tail), in bytes.
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The separator line between the poll header and the log.
const LOG_MARKER: &str = "--- log ---";

/// The job's directory on the node.
pub fn job_dir(base: &RemoteDir, job: &JobId) -> String {
    format!("{base}/cloudpods-{job}.d")
}

/// Starts `command` detached, once per job id. Prints `started` or `already-started`.
pub fn detached(base: &RemoteDir, job: &JobId, command: &Command) -> Result<RemoteCommand> {
    let inner = command.argv.to_shell_command()?;
    // $1 is the job directory, passed as a positional so no path is spliced into the script.
    let child = format!(
        "echo $$ >\"$1/pid.tmp\" && mv -f \"$1/pid.tmp\" \"$1/pid\"; \
         {inner} </dev/null >\"$1/log\" 2>&1; \
         echo $? >\"$1/rc.tmp\" && mv -f \"$1/rc.tmp\" \"$1/rc\""
    );
    let d = quote(&job_dir(base, job))?;
    let script = format!(
        "umask 077\n\
         d={d}\n\
         if mkdir \"$d\" 2>/dev/null; then\n\
         \x20 setsid -f sh -c {child} cloudpods-job \"$d\" </dev/null >/dev/null 2>&1 \
         || {{ rmdir \"$d\"; echo 'cloudpods-job: setsid failed' >&2; exit 1; }}\n\
         \x20 echo started\n\
         elif [ -d \"$d\" ]; then\n\
         \x20 echo already-started\n\
         else\n\
         \x20 echo \"cloudpods-job: cannot create $d\" >&2; exit 1\n\
         fi",
        child = quote(&child)?
    );
    Ok(RemoteCommand {
        kind: CommandKind::DetachedStart,
        script,
        stdin: None,
    })
}

/// Reports the job's state (`state=absent|starting|running|done|lost`, `rc=N` when done), then
/// `--- log ---` and the log's last [`LOG_TAIL_BYTES`] bytes.
pub fn poll_detached(base: &RemoteDir, job: &JobId) -> Result<RemoteCommand> {
    let d = quote(&job_dir(base, job))?;
    let script = format!(
        "d={d}\n\
         if [ ! -d \"$d\" ]; then echo state=absent; exit 0; fi\n\
         s=\n\
         if [ ! -f \"$d/rc\" ]; then\n\
         \x20 if [ ! -f \"$d/pid\" ]; then s=starting\n\
         \x20 elif kill -0 \"$(cat \"$d/pid\")\" 2>/dev/null; then s=running; fi\n\
         fi\n\
         if [ -z \"$s\" ]; then if [ -f \"$d/rc\" ]; then s=done; else s=lost; fi; fi\n\
         echo \"state=$s\"\n\
         if [ \"$s\" = done ]; then echo \"rc=$(cat \"$d/rc\")\"; fi\n\
         echo '{LOG_MARKER}'\n\
         tail -c {LOG_TAIL_BYTES} \"$d/log\" 2>/dev/null\n\
         exit 0"
    );
    Ok(RemoteCommand {
        kind: CommandKind::DetachedPoll,
        script,
        stdin: None,
    })
}

/// Removes the job's files unless it is still starting or running. Prints `removed`, `absent`
/// or `busy`.
pub fn cleanup_detached(base: &RemoteDir, job: &JobId) -> Result<RemoteCommand> {
    let d = quote(&job_dir(base, job))?;
    let script = format!(
        "d={d}\n\
         if [ ! -d \"$d\" ]; then echo absent; exit 0; fi\n\
         if [ ! -f \"$d/rc\" ]; then\n\
         \x20 if [ ! -f \"$d/pid\" ] || kill -0 \"$(cat \"$d/pid\")\" 2>/dev/null; then echo busy; exit 0; fi\n\
         fi\n\
         rm -rf -- \"$d\" && echo removed"
    );
    Ok(RemoteCommand {
        kind: CommandKind::DetachedCleanup,
        script,
        stdin: None,
    })
}

/// Result of starting a detached job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// This call started it.
    Started,
    /// It had been started before (possibly already finished); poll it.
    AlreadyStarted,
}

/// Reads the start script's stdout.
pub fn parse_start(stdout: &str) -> Result<StartOutcome> {
    match stdout.trim() {
        "started" => Ok(StartOutcome::Started),
        "already-started" => Ok(StartOutcome::AlreadyStarted),
        other => Err(ProxmoxError::unexpected(format!(
            "detached start printed {:?}",
            super::error::truncate(other, 200)
        ))),
    }
}

/// State of a detached job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// No such job directory: never started, or cleaned up.
    Absent,
    /// Started, still running (or about to write its pid).
    Running,
    /// Finished with this exit status.
    Done {
        /// The command's exit status.
        exit: i32,
    },
    /// Its process is gone without an exit status (killed, node rebooted).
    Lost,
}

/// A poll's result: the state and the log tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPoll {
    /// Where the job is.
    pub state: JobState,
    /// Tail of the merged stdout/stderr.
    pub log: String,
}

impl JobPoll {
    /// For a finished job, its outcome classified as if the command had run in the foreground.
    pub fn result(&self, kind: CommandKind) -> Option<std::result::Result<Outcome, ProxmoxError>> {
        match self.state {
            JobState::Done { exit } => Some(check(kind, exit, &self.log, &self.log)),
            _ => None,
        }
    }
}

/// Reads the poll script's stdout.
pub fn parse_poll(stdout: &str) -> Result<JobPoll> {
    let (head, log) = match stdout.split_once(&format!("{LOG_MARKER}\n")) {
        Some((h, l)) => (h, l),
        None => (stdout, ""),
    };
    let mut state = None;
    let mut rc = None;
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("state=") {
            state = Some(s.to_string());
        } else if let Some(r) = line.strip_prefix("rc=") {
            rc = Some(r.trim().to_string());
        }
    }
    let bad = |what: &str| ProxmoxError::unexpected(format!("detached poll: {what}"));
    let state = match state.as_deref() {
        Some("absent") => JobState::Absent,
        Some("starting" | "running") => JobState::Running,
        Some("lost") => JobState::Lost,
        Some("done") => {
            let exit = rc
                .as_deref()
                .and_then(|r| r.parse::<i32>().ok())
                .ok_or_else(|| bad("missing or bad rc"))?;
            JobState::Done { exit }
        }
        _ => return Err(bad("no state line")),
    };
    Ok(JobPoll {
        state,
        log: log.to_string(),
    })
}

/// Reads the cleanup script's stdout: `true` when the job's files are gone.
pub fn parse_cleanup(stdout: &str) -> Result<bool> {
    match stdout.trim() {
        "removed" | "absent" => Ok(true),
        "busy" => Ok(false),
        other => Err(ProxmoxError::unexpected(format!(
            "detached cleanup printed {:?}",
            super::error::truncate(other, 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxmox::argv::Argv;
    use std::process::Command as Process;
    use std::time::{Duration, Instant};

    fn run(cmd: &RemoteCommand) -> (i32, String, String) {
        let out = Process::new("sh")
            .arg("-c")
            .arg(&cmd.script)
            .output()
            .expect("sh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn wait_done(base: &RemoteDir, job: &JobId) -> JobPoll {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, out, _) = run(&poll_detached(base, job).expect("poll"));
            assert_eq!(code, 0);
            let p = parse_poll(&out).expect("parse");
            if matches!(p.state, JobState::Done { .. } | JobState::Lost)
                || Instant::now() > deadline
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn base_in(dir: &std::path::Path) -> RemoteDir {
        RemoteDir::parse(dir.to_str().expect("utf8")).expect("dir")
    }

    #[test]
    fn runs_once_and_reports_exit_and_log() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = base_in(tmp.path());
        let job = JobId::parse("clone-pod-1-123").expect("job");
        let counter = tmp.path().join("count");
        // A hostile-looking argument must arrive verbatim through two quoting layers.
        let inner = Command {
            kind: CommandKind::Clone,
            argv: Argv::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo x >> '{}'; echo \"it's $1\"; echo oops >&2; sleep 0.2; exit 3",
                    counter.display()
                ))
                .arg("sh")
                .arg("$(id) 'q'"),
        };
        let (code, out, err) = run(&detached(&base, &job, &inner).expect("start"));
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(parse_start(&out), Ok(StartOutcome::Started));
        // Second start while running: not started again.
        let (_, out, _) = run(&detached(&base, &job, &inner).expect("start"));
        assert_eq!(parse_start(&out), Ok(StartOutcome::AlreadyStarted));
        // Cleanup refuses while it runs.
        let (_, out, _) = run(&cleanup_detached(&base, &job).expect("cleanup"));
        assert_eq!(parse_cleanup(&out), Ok(false));

        let p = wait_done(&base, &job);
        assert_eq!(p.state, JobState::Done { exit: 3 });
        assert!(p.log.contains("it's $(id) 'q'"), "log: {:?}", p.log);
        assert!(p.log.contains("oops"));
        // Third start after completion: still not run again.
        let (_, out, _) = run(&detached(&base, &job, &inner).expect("start"));
        assert_eq!(parse_start(&out), Ok(StartOutcome::AlreadyStarted));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::read_to_string(&counter).expect("count"), "x\n");

        let (_, out, _) = run(&cleanup_detached(&base, &job).expect("cleanup"));
        assert_eq!(parse_cleanup(&out), Ok(true));
        let (_, out, _) = run(&poll_detached(&base, &job).expect("poll"));
        assert_eq!(parse_poll(&out).map(|p| p.state), Ok(JobState::Absent));
        let (_, out, _) = run(&cleanup_detached(&base, &job).expect("cleanup"));
        assert_eq!(parse_cleanup(&out), Ok(true));
    }

    #[test]
    fn killed_job_is_lost() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = base_in(tmp.path());
        let job = JobId::parse("killed").expect("job");
        // The job kills its own wrapper shell, as a crash or reboot would.
        let inner = Command {
            kind: CommandKind::Backup,
            argv: Argv::new("sh").arg("-c").arg("kill -9 $PPID"),
        };
        let (_, out, _) = run(&detached(&base, &job, &inner).expect("start"));
        assert_eq!(parse_start(&out), Ok(StartOutcome::Started));
        let p = wait_done(&base, &job);
        assert_eq!(p.state, JobState::Lost);
        let (_, out, _) = run(&cleanup_detached(&base, &job).expect("cleanup"));
        assert_eq!(parse_cleanup(&out), Ok(true));
    }

    #[test]
    fn missing_base_dir_fails_cleanly() {
        let base = RemoteDir::parse("/nonexistent-cloudpods-test/dir").expect("dir");
        let job = JobId::parse("x").expect("job");
        let inner = Command {
            kind: CommandKind::Clone,
            argv: Argv::new("true"),
        };
        let (code, out, err) = run(&detached(&base, &job, &inner).expect("start"));
        assert_eq!(code, 1);
        assert_eq!(out, "");
        assert!(err.contains("cannot create"));
    }

    #[test]
    fn poll_parsing() {
        assert_eq!(
            parse_poll("state=done\nrc=0\n--- log ---\nline1\nline2\n"),
            Ok(JobPoll {
                state: JobState::Done { exit: 0 },
                log: "line1\nline2\n".into()
            })
        );
        assert_eq!(
            parse_poll("state=starting\n--- log ---\n").map(|p| p.state),
            Ok(JobState::Running)
        );
        assert_eq!(
            parse_poll("state=absent\n").map(|p| p.state),
            Ok(JobState::Absent)
        );
        assert!(parse_poll("state=done\n--- log ---\n").is_err());
        assert!(parse_poll("state=done\nrc=x\n--- log ---\n").is_err());
        assert!(parse_poll("garbage").is_err());
        assert!(parse_start("nope").is_err());
        assert!(parse_cleanup("nope").is_err());
    }

    #[test]
    fn done_job_is_classified_like_a_foreground_run() {
        let ok = JobPoll {
            state: JobState::Done { exit: 0 },
            log: "creating a clone of VM 9000 with ID 123\n".into(),
        };
        assert_eq!(ok.result(CommandKind::Clone), Some(Ok(Outcome::default())));
        let failed = JobPoll {
            state: JobState::Done { exit: 255 },
            log: "creating a clone of VM 9000 with ID 123\nunable to create VM 123: config file already exists\n"
                .into(),
        };
        assert!(matches!(
            failed.result(CommandKind::Clone),
            Some(Err(ProxmoxError::VmidTaken { .. }))
        ));
        let running = JobPoll {
            state: JobState::Running,
            log: String::new(),
        };
        assert_eq!(running.result(CommandKind::Clone), None);
    }
}
