//! SSH transport to one Proxmox node: one pooled, host-key-verified russh connection per
//! node with many concurrent exec channels.
//!
//! This layer knows nothing about Proxmox. It runs a command string exactly as given (the
//! caller builds and quotes it, including any `LC_ALL=... ` prefix), feeds optional stdin,
//! and collects stdout, stderr and the exit status or signal.
//!
//! Guarantees:
//! - **No command runs on an unverified connection.** The server's host key must match an
//!   entry for `[host]:port` (or `host` on port 22) in the configured known_hosts file.
//!   An unknown key, a changed key, or a host certificate aborts the connection during the
//!   key exchange, before authentication.
//! - **At most once.** A command is never re-sent. Only *opening a channel* is retried,
//!   once, on a fresh connection when the pooled one turns out to be dead; at that point no
//!   command has been sent. Whether a failed command may have run is told by
//!   [`SshError::command_may_have_run`]; the caller decides about retries.
//! - **Bounded channels.** At most [`SshSettings::max_sessions`] channels are open on the
//!   connection at once (OpenSSH's `MaxSessions` defaults to 10; one more fails to open).
//!   Further callers wait for a slot, within their timeout. sshd may briefly refuse a
//!   channel anyway (it frees a closed session a moment after the close, and keeps one
//!   whose process outlived a timeout); such refusals are retried with a short backoff
//!   until the caller's deadline, as no command has been sent yet.
//! - **Timeouts** close the channel and return [`SshError::Timeout`]. The remote process is
//!   not signalled and may keep running, exactly as after a dropped connection: sshd
//!   closes its pipes, so its next write gets `EPIPE`/`SIGPIPE` (a Proxmox task then
//!   aborts, see the CLI reference §14.4), while a silent process runs to its end. Long
//!   jobs belong in detached jobs, not in long timeouts. A caller that drops the `exec`
//!   future behaves the same way.
//! - Secrets: key material is never logged or printed; logs carry host, port, user, the
//!   program name (the first word of the command that is not a `NAME=value` assignment),
//!   the command length and durations, never the arguments.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh::client::{self, Msg};
use russh::keys::{self, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

/// Default number of concurrent channels per connection (OpenSSH's `MaxSessions` default).
pub const DEFAULT_MAX_SESSIONS: usize = 10;

/// Where and how to reach one node over SSH.
///
/// Holds only paths, never key material, so its `Debug` output is safe to log.
#[derive(Clone, Debug)]
pub struct SshSettings {
    /// Host name or IP address to connect to; also the name looked up in known_hosts.
    pub host: String,
    /// TCP port (22 on a real node).
    pub port: u16,
    /// Remote user name.
    pub user: String,
    /// Path of the unencrypted OpenSSH private key (ed25519 recommended).
    pub key_path: PathBuf,
    /// Path of the known_hosts file that must list the node's host key.
    pub known_hosts_path: PathBuf,
    /// Bound on TCP connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Channels open at once on the connection; keep it at or below the server's
    /// `MaxSessions` (default [`DEFAULT_MAX_SESSIONS`]).
    pub max_sessions: usize,
    /// SSH keepalive interval for an idle connection; three unanswered keepalives close it.
    /// Zero disables keepalives.
    pub keepalive_interval: Duration,
    /// Run every command under coreutils `timeout` on the node, with the caller's timeout and
    /// this grace before SIGKILL, so a timed-out command dies on the node too (closing a
    /// channel without a pty does not stop its process, which could hold a VM lock for
    /// ever). `None` sends commands bare (for hosts without coreutils).
    pub remote_kill_grace: Option<Duration>,
}

impl SshSettings {
    /// Settings with defaults: 10 s connect timeout, 10 sessions, 30 s keepalive.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        key_path: impl Into<PathBuf>,
        known_hosts_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            key_path: key_path.into(),
            known_hosts_path: known_hosts_path.into(),
            connect_timeout: Duration::from_secs(10),
            max_sessions: DEFAULT_MAX_SESSIONS,
            keepalive_interval: Duration::from_secs(30),
            remote_kill_grace: Some(Duration::from_secs(5)),
        }
    }
}

/// How much longer than timeout + grace we wait for the node's answer before giving up.
const REMOTE_DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Exit status of coreutils `timeout` when the deadline passed (SIGTERM sufficed).
const TIMEOUT_EXIT: u32 = 124;
/// Exit status when `timeout` had to SIGKILL after the grace (128 + 9).
const TIMEOUT_KILLED_EXIT: u32 = 137;

/// `script` under coreutils `timeout`: SIGTERM to the whole process group after `limit`,
/// SIGKILL `grace` later. Detached jobs (`setsid`) are in their own group and survive.
pub fn with_remote_deadline(
    script: &str,
    limit: Duration,
    grace: Duration,
) -> Result<String, SshError> {
    let quoted = super::argv::quote(script).map_err(|_| SshError::ChannelOpen {
        message: "the command contains a NUL byte".into(),
    })?;
    Ok(format!(
        "exec timeout -k {:.3} {:.3} sh -c {quoted}",
        grace.as_secs_f64(),
        limit.as_secs_f64().max(0.001)
    ))
}

/// What a finished command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status, when the command exited normally.
    pub exit_status: Option<u32>,
    /// The signal name without `SIG` (e.g. `KILL`), when the command was killed by one.
    pub exit_signal: Option<String>,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
    /// True when stdout or stderr passed [`MAX_STREAM_BYTES`] and the rest was discarded.
    pub truncated: bool,
}

/// Most bytes kept per output stream of one command; a runaway command cannot exhaust memory.
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

/// Appends `data` up to [`MAX_STREAM_BYTES`], noting when anything was dropped.
fn append_capped(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_STREAM_BYTES.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl CommandOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a command could not be run or finished.
///
/// Messages never contain key material or command arguments.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SshError {
    /// The node's host key is not in known_hosts: the connection was refused.
    #[error("host key of {host}:{port} is not in known_hosts; connection refused")]
    HostKeyUnknown {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
    },
    /// known_hosts holds a different key of the same type for the node: possible
    /// man-in-the-middle; the connection was refused.
    #[error(
        "host key of {host}:{port} differs from known_hosts line {line} (possible man-in-the-middle); connection refused"
    )]
    HostKeyChanged {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
        /// 1-based line of the mismatching entry.
        line: usize,
    },
    /// The server presented a host certificate; only plain keys listed in known_hosts are
    /// accepted.
    #[error("the server presented a host certificate; only known_hosts keys are accepted")]
    HostKeyCertificateRejected,
    /// The known_hosts file is missing, unreadable or malformed.
    #[error("known_hosts file {path}: {message}")]
    KnownHosts {
        /// The configured path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The private key file is missing, unreadable, encrypted or malformed.
    #[error("private key file {path}: {message}")]
    KeyFile {
        /// The configured path.
        path: PathBuf,
        /// What went wrong (never the key itself).
        message: String,
    },
    /// The server rejected public-key authentication.
    #[error("public key authentication as {user} was rejected")]
    Auth {
        /// The user name.
        user: String,
    },
    /// TCP connect, the SSH handshake or authentication failed or timed out.
    #[error("cannot connect to {host}:{port}: {message}")]
    Connect {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
        /// What went wrong.
        message: String,
    },
    /// The command's timeout expired. If the command was already sent, the channel was
    /// closed and the remote process may still be running.
    #[error("command timed out after {after:?}")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The server refused a channel or the exec request; the command did not run.
    #[error("cannot open an SSH channel: {message}")]
    ChannelOpen {
        /// What went wrong.
        message: String,
    },
    /// The connection broke after the command was sent; it may have run, partly or fully.
    #[error("SSH connection lost while the command ran: {message}")]
    Disconnected {
        /// What went wrong.
        message: String,
    },
}

impl SshError {
    /// Whether the remote command may have started (so a retry could run it twice).
    /// `false` means it certainly did not run. A [`SshError::Timeout`] counts as "may have
    /// run" even when it expired while waiting for a channel.
    pub fn command_may_have_run(&self) -> bool {
        matches!(
            self,
            SshError::Timeout { .. } | SshError::Disconnected { .. }
        )
    }
}

/// One SSH node: a lazily (re)connected, pooled connection shared by all callers.
///
/// Cheap to clone (clones share the connection). Commands run concurrently on separate
/// channels, at most [`SshSettings::max_sessions`] at a time.
#[derive(Clone)]
pub struct SshNode {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SshSettings,
    config: Arc<client::Config>,
    permits: Arc<Semaphore>,
    slot: Mutex<Slot>,
    /// Completed connection attempts; lets callers that waited on an attempt share its
    /// failure instead of each trying again (single flight).
    attempts: AtomicU64,
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Connection>>,
    last_error: Option<SshError>,
    next_id: u64,
}

struct Connection {
    id: u64,
    handle: client::Handle<HostKeyCheck>,
}

impl fmt::Debug for SshNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("SshNode")
            .field("host", &s.host)
            .field("port", &s.port)
            .field("user", &s.user)
            .finish_non_exhaustive()
    }
}

impl SshNode {
    /// A node handle; nothing connects until the first [`SshNode::exec`].
    pub fn new(settings: SshSettings) -> Self {
        let keepalive =
            (!settings.keepalive_interval.is_zero()).then_some(settings.keepalive_interval);
        let config = client::Config {
            nodelay: true,
            keepalive_interval: keepalive,
            keepalive_max: 3,
            inactivity_timeout: None,
            ..Default::default()
        };
        let max_sessions = settings.max_sessions.max(1);
        Self {
            inner: Arc::new(Inner {
                settings,
                config: Arc::new(config),
                permits: Arc::new(Semaphore::new(max_sessions)),
                slot: Mutex::new(Slot::default()),
                attempts: AtomicU64::new(0),
            }),
        }
    }

    /// The settings this node was created with.
    pub fn settings(&self) -> &SshSettings {
        &self.inner.settings
    }

    /// Run `command` (sent as-is) with optional stdin (followed by EOF; `None` means EOF at
    /// once, like `</dev/null`), waiting at most `timeout` in total: for a free channel
    /// slot, a (re)connect, and the command itself.
    ///
    /// Never re-sends the command. A non-zero exit status is `Ok` with that status.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CommandOutput, SshError> {
        let s = &self.inner.settings;
        let span = tracing::debug_span!(
            "ssh_exec",
            host = %s.host,
            port = s.port,
            user = %s.user,
            program = %program_name(command),
            command_len = command.len(),
        );
        async {
            let started = Instant::now();
            let result = self.exec_inner(command, stdin, timeout, started).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(out) => tracing::debug!(
                    elapsed_ms,
                    exit_status = ?out.exit_status,
                    exit_signal = ?out.exit_signal,
                    stdout_len = out.stdout.len(),
                    stderr_len = out.stderr.len(),
                    truncated = out.truncated,
                    "ssh command finished"
                ),
                Err(e) => tracing::debug!(elapsed_ms, error = %e, "ssh command failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Close the pooled connection (if any) politely. Later calls reconnect.
    pub async fn close(&self) {
        let conn = self.inner.slot.lock().await.current.take();
        if let Some(conn) = conn {
            let _ = conn
                .handle
                .disconnect(Disconnect::ByApplication, "", "en")
                .await;
        }
    }

    async fn exec_inner(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        started: Instant,
    ) -> Result<CommandOutput, SshError> {
        let deadline = started + timeout;
        let timed_out = || SshError::Timeout { after: timeout };

        // A channel slot, then an open channel: nothing has been sent yet.
        let permit = timeout_at(deadline, self.inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| SshError::ChannelOpen {
                message: "the channel limiter was closed".into(),
            })?;
        let channel = self.open_channel(deadline, timeout).await?;
        let (read, write) = channel.split();
        let mut open = OpenChannel {
            read: Some(read),
            write: Some(write),
            _permit: permit,
            finished: false,
        };

        // With a remote deadline the node ends the command itself when the time is up, and
        // we wait a little longer for its answer (exit 124/137) than the caller's timeout.
        let (script, wait_until, remote_limit) = match self.inner.settings.remote_kill_grace {
            Some(grace) => {
                let limit = deadline.saturating_duration_since(Instant::now());
                (
                    with_remote_deadline(command, limit, grace)?,
                    deadline + grace + REMOTE_DEADLINE_MARGIN,
                    Some(limit),
                )
            }
            None => (command.to_string(), deadline, None),
        };
        let sent = Instant::now();
        let ran = timeout_at(wait_until, open.run(&script, stdin)).await;
        match ran {
            // `timeout` exits 124 after SIGTERM worked; after the SIGKILL it sends to its
            // process group (itself included) it is reported as 137 or as signal KILL.
            Ok(Ok(out))
                if remote_limit.is_some_and(|limit| sent.elapsed() >= limit)
                    && (matches!(
                        out.exit_status,
                        Some(TIMEOUT_EXIT) | Some(TIMEOUT_KILLED_EXIT)
                    ) || out.exit_signal.as_deref() == Some("KILL")) =>
            {
                Err(timed_out())
            }
            Ok(result) => result,
            // Dropping `open` closes the channel.
            Err(_) => Err(timed_out()),
        }
    }

    /// Open a session channel on the pooled connection; on a dead connection, reconnect
    /// once (shared with concurrent callers) and try once more. When the server refuses the
    /// channel while the connection is fine (sshd `MaxSessions`: it may still count a
    /// session we just closed, or one whose process outlived a timeout), wait briefly and
    /// try again until `deadline`. No command has been sent at this point.
    async fn open_channel(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<russh::Channel<Msg>, SshError> {
        let timed_out = || SshError::Timeout { after: timeout };
        let mut conn = timeout_at(deadline, self.connection(None))
            .await
            .map_err(|_| timed_out())??;
        let mut reconnected = false;
        let mut backoff = Duration::from_millis(2);
        loop {
            match open_session_until(&conn, deadline).await {
                None => return Err(timed_out()),
                Some(Ok(ch)) => return Ok(ch),
                Some(Err(russh::Error::ChannelOpenFailure(reason))) if !conn.handle.is_closed() => {
                    if Instant::now() + backoff >= deadline {
                        return Err(SshError::ChannelOpen {
                            message: format!(
                                "the server kept refusing channels ({reason:?}; MaxSessions reached?)"
                            ),
                        });
                    }
                    tracing::trace!(?reason, ?backoff, "server refused a channel; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Some(Err(e)) if !reconnected => {
                    tracing::debug!(error = %e, "channel open failed on a dead connection; reconnecting");
                    conn = timeout_at(deadline, self.connection(Some(conn.id)))
                        .await
                        .map_err(|_| timed_out())??;
                    reconnected = true;
                }
                Some(Err(e)) => {
                    return Err(SshError::ChannelOpen {
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    /// The live pooled connection, connecting if there is none, it is closed, or its id is
    /// `stale`. Concurrent callers share one attempt and its result.
    async fn connection(&self, stale: Option<u64>) -> Result<Arc<Connection>, SshError> {
        let seen = self.inner.attempts.load(Ordering::Acquire);
        let mut slot = self.inner.slot.lock().await;
        if let Some(conn) = &slot.current
            && !conn.handle.is_closed()
            && Some(conn.id) != stale
        {
            return Ok(conn.clone());
        }
        if self.inner.attempts.load(Ordering::Acquire) != seen
            && let Some(err) = &slot.last_error
        {
            // An attempt finished while we waited for the lock, and it failed.
            return Err(err.clone());
        }
        slot.current = None;
        let result = self.connect().await;
        self.inner.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(handle) => {
                slot.next_id += 1;
                let conn = Arc::new(Connection {
                    id: slot.next_id,
                    handle,
                });
                slot.current = Some(conn.clone());
                slot.last_error = None;
                Ok(conn)
            }
            Err(e) => {
                slot.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Connect, verify the host key, authenticate; bounded by `connect_timeout`.
    async fn connect(&self) -> Result<client::Handle<HostKeyCheck>, SshError> {
        let s = &self.inner.settings;
        let started = Instant::now();
        // Fail early and clearly on configuration problems (russh would treat a missing
        // known_hosts file as "unknown host").
        if let Err(e) = std::fs::File::open(&s.known_hosts_path) {
            return Err(SshError::KnownHosts {
                path: s.known_hosts_path.clone(),
                message: e.to_string(),
            });
        }
        let key = keys::load_secret_key(&s.key_path, None).map_err(|e| SshError::KeyFile {
            path: s.key_path.clone(),
            message: e.to_string(),
        })?;
        // No hash algorithm: right for ed25519/ECDSA, the supported key types (RSA would need
        // `best_supported_rsa_hash`, and this build has no RSA support).
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), None);

        let handler = HostKeyCheck {
            host: s.host.clone(),
            port: s.port,
            known_hosts: s.known_hosts_path.clone(),
        };
        let connect_err = |message: String| SshError::Connect {
            host: s.host.clone(),
            port: s.port,
            message,
        };
        let attempt = async {
            let mut handle = client::connect(
                self.inner.config.clone(),
                (s.host.as_str(), s.port),
                handler,
            )
            .await
            .map_err(|e| match e {
                HandlerError::HostKey(e) => e,
                HandlerError::Ssh(e) => connect_err(e.to_string()),
            })?;
            let auth = handle
                .authenticate_publickey(s.user.clone(), key)
                .await
                .map_err(|e| connect_err(format!("during authentication: {e}")))?;
            if !auth.success() {
                return Err(SshError::Auth {
                    user: s.user.clone(),
                });
            }
            Ok(handle)
        };
        let result = match timeout_at(started + s.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(connect_err(format!(
                "timed out after {:?}",
                s.connect_timeout
            ))),
        };
        match &result {
            Ok(_) => tracing::info!(
                host = %s.host,
                port = s.port,
                user = %s.user,
                connect_ms = started.elapsed().as_millis() as u64,
                "ssh connected"
            ),
            Err(e) => tracing::warn!(
                host = %s.host,
                port = s.port,
                user = %s.user,
                error = %e,
                "ssh connect failed"
            ),
        }
        result
    }
}

/// Open a session channel, giving up at `deadline` (`None`). The open runs in its own task:
/// one that the server confirms after the deadline is closed at once, so no idle session
/// is left behind to count against `MaxSessions`.
async fn open_session_until(
    conn: &Arc<Connection>,
    deadline: Instant,
) -> Option<Result<russh::Channel<Msg>, russh::Error>> {
    let opener = conn.clone();
    let mut task = tokio::spawn(async move { opener.handle.channel_open_session().await });
    match timeout_at(deadline, &mut task).await {
        Ok(Ok(result)) => Some(result),
        Ok(Err(join)) => Some(Err(russh::Error::IO(std::io::Error::other(
            join.to_string(),
        )))),
        Err(_) => {
            tokio::spawn(async move {
                if let Ok(Ok(ch)) = task.await {
                    let _ = ch.close().await;
                }
            });
            None
        }
    }
}

/// An exec channel plus its slot. Dropped before the server closed it (timeout, a
/// cancelled caller), it closes the channel.
struct OpenChannel {
    read: Option<ChannelReadHalf>,
    write: Option<ChannelWriteHalf<Msg>>,
    /// Held for the channel's lifetime; dropping it frees the slot.
    _permit: OwnedSemaphorePermit,
    finished: bool,
}

impl OpenChannel {
    async fn run(
        &mut self,
        command: &str,
        stdin: Option<&[u8]>,
    ) -> Result<CommandOutput, SshError> {
        let (Some(read), Some(write)) = (self.read.as_mut(), self.write.as_ref()) else {
            return Err(SshError::ChannelOpen {
                message: "channel already used".into(),
            });
        };
        write
            .exec(true, command)
            .await
            .map_err(|e| SshError::ChannelOpen {
                message: format!("cannot send the exec request: {e}"),
            })?;

        // Feed stdin while reading output (a remote that writes a lot before reading its
        // stdin would otherwise deadlock us). The reader decides when we are done: a remote
        // that exits without reading all stdin leaves the writer waiting for window space.
        let writer = async {
            if let Some(data) = stdin
                && !data.is_empty()
            {
                write.data(data).await?;
            }
            write.eof().await
        };
        let reader = read_output(read);
        tokio::pin!(writer);
        tokio::pin!(reader);
        let mut writer_done = false;
        let (result, channel_ended) = loop {
            tokio::select! {
                w = &mut writer, if !writer_done => {
                    writer_done = true;
                    if let Err(e) = w {
                        // The reader will see why (e.g. the connection died).
                        tracing::debug!(error = %e, "writing stdin failed");
                    }
                }
                r = &mut reader => break r,
            }
        };
        self.finished = channel_ended;
        result
    }
}

/// Read the channel until the server closes it. Returns the result and whether the
/// channel has ended (no more messages will come).
async fn read_output(read: &mut ChannelReadHalf) -> (Result<CommandOutput, SshError>, bool) {
    let mut out = CommandOutput::default();
    let mut eof = false;
    let mut closed = false;
    let mut refused = false;
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => append_capped(&mut out.stdout, &data, &mut out.truncated),
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                append_capped(&mut out.stderr, &data, &mut out.truncated)
            }
            ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                out.exit_signal = Some(signal_text(&signal_name));
            }
            ChannelMsg::Eof => eof = true,
            ChannelMsg::Close => closed = true,
            ChannelMsg::Failure => refused = true,
            _ => {}
        }
    }
    if refused && out.stdout.is_empty() && out.exit_status.is_none() {
        return (
            Err(SshError::ChannelOpen {
                message: "the server refused the exec request".into(),
            }),
            true,
        );
    }
    let finished = out.exit_status.is_some() || out.exit_signal.is_some();
    if closed || (eof && finished) {
        (Ok(out), true)
    } else {
        (
            Err(SshError::Disconnected {
                message: "the connection closed before the command finished".into(),
            }),
            true,
        )
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Timed out or cancelled: ask the server to close the channel. russh 0.65 never
        // reports the server's answer to a close we started (it forgets the channel), so
        // there is nothing to wait for; the slot is released now, and a server that still
        // counts the session (its process runs on) is handled by `open_channel`'s retry.
        self.read.take();
        let write = self.write.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(write) = write {
            rt.spawn(async move {
                let _ = write.close().await;
            });
        }
    }
}

/// The russh handler: verifies the host key against known_hosts.
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

/// Handler error: a host key verdict, or a protocol error.
#[derive(Debug)]
enum HandlerError {
    HostKey(SshError),
    Ssh(russh::Error),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

impl client::Handler for HostKeyCheck {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(HandlerError::HostKey(SshError::HostKeyCertificateRejected));
            }
        };
        let recorded =
            keys::known_hosts::known_host_keys_path(&self.host, self.port, &self.known_hosts)
                .map_err(|e| {
                    HandlerError::HostKey(SshError::KnownHosts {
                        path: self.known_hosts.clone(),
                        message: e.to_string(),
                    })
                })?;
        match host_key_verdict(key, &recorded) {
            HostKeyVerdict::Known => Ok(true),
            HostKeyVerdict::Unknown => Err(HandlerError::HostKey(SshError::HostKeyUnknown {
                host: self.host.clone(),
                port: self.port,
            })),
            HostKeyVerdict::Changed { line } => {
                Err(HandlerError::HostKey(SshError::HostKeyChanged {
                    host: self.host.clone(),
                    port: self.port,
                    line,
                }))
            }
        }
    }
}

/// What known_hosts says about a presented host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKeyVerdict {
    /// One of the recorded keys is this key.
    Known,
    /// No key of this type is recorded for the host.
    Unknown,
    /// Keys of this type are recorded, none of them this one (first such line).
    Changed { line: usize },
}

/// Like OpenSSH, any recorded key of the host may match, so the old and the new host key can
/// be listed side by side while a node's key is rotated (russh's own check refuses as soon
/// as one line of the same type differs).
fn host_key_verdict(
    key: &keys::PublicKey,
    recorded: &[(usize, keys::PublicKey)],
) -> HostKeyVerdict {
    if recorded.iter().any(|(_, k)| k == key) {
        return HostKeyVerdict::Known;
    }
    match recorded
        .iter()
        .find(|(_, k)| k.algorithm() == key.algorithm())
    {
        Some((line, _)) => HostKeyVerdict::Changed { line: *line },
        None => HostKeyVerdict::Unknown,
    }
}

/// The program a command runs, for logs: the first word that is not a `NAME=value`
/// environment assignment, without any path, at most 32 characters.
fn program_name(command: &str) -> &str {
    let word = command
        .split_whitespace()
        .find(|w| !is_assignment(w))
        .unwrap_or("");
    let word = word.rsplit('/').next().unwrap_or(word);
    match word.char_indices().nth(32) {
        Some((i, _)) => &word[..i],
        None => word,
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

fn signal_text(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_recorded_key_of_the_host_may_match() {
        use super::{HostKeyVerdict, host_key_verdict, keys};
        let ed_a = keys::parse_public_key_base64(
            "AAAAC3NzaC1lZDI1NTE5AAAAIKTMmvtMBSbDjfGYztmusYOEPKUv2k5lenFb9Rw+o9Co",
        )
        .unwrap();
        let ed_b = keys::parse_public_key_base64(
            "AAAAC3NzaC1lZDI1NTE5AAAAIK8xjM8wyaPo+FK0IdLoHE51aXRoZSJv9YATkzfy47wQ",
        )
        .unwrap();
        let ec = keys::parse_public_key_base64(
            "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBE5qnUTq2X97CGSKwLFBWb4xlp0ijTQoUdyP1NCQ3BThTR8f8bb1fA/cevWdz5EVQtphC+XbshG/rfAt5IbxFZE=",
        )
        .unwrap();
        assert_eq!(host_key_verdict(&ed_a, &[]), HostKeyVerdict::Unknown);
        assert_eq!(
            host_key_verdict(&ed_a, &[(3, ec.clone())]),
            HostKeyVerdict::Unknown
        );
        assert_eq!(
            host_key_verdict(&ed_a, &[(1, ed_a.clone())]),
            HostKeyVerdict::Known
        );
        assert_eq!(
            host_key_verdict(&ed_a, &[(1, ed_b.clone())]),
            HostKeyVerdict::Changed { line: 1 }
        );
        // Rotation: old and new key side by side, in either order.
        assert_eq!(
            host_key_verdict(&ed_a, &[(1, ed_b.clone()), (2, ed_a.clone())]),
            HostKeyVerdict::Known
        );
        assert_eq!(
            host_key_verdict(&ed_b, &[(1, ed_b.clone()), (2, ed_a.clone())]),
            HostKeyVerdict::Known
        );
        assert_eq!(
            host_key_verdict(&ed_a, &[(4, ec), (7, ed_b)]),
            HostKeyVerdict::Changed { line: 7 }
        );
    }

    #[test]
    fn output_is_capped_per_stream() {
        let mut buf = Vec::new();
        let mut truncated = false;
        append_capped(&mut buf, &vec![b'x'; MAX_STREAM_BYTES - 10], &mut truncated);
        assert!(!truncated);
        append_capped(&mut buf, &[b'y'; 25], &mut truncated);
        assert!(truncated);
        assert_eq!(buf.len(), MAX_STREAM_BYTES);
        append_capped(&mut buf, b"more", &mut truncated);
        assert_eq!(buf.len(), MAX_STREAM_BYTES);
    }

    use super::*;

    #[test]
    fn program_name_skips_assignments_and_paths() {
        assert_eq!(program_name("LC_ALL=C.UTF-8 qm set 100 --x y"), "qm");
        assert_eq!(program_name("/usr/sbin/qm list"), "qm");
        assert_eq!(program_name("  echo hi"), "echo");
        assert_eq!(program_name("A=1 B=2"), "");
        assert_eq!(program_name("x=1=2 cat"), "cat");
        assert_eq!(program_name("--x=1 cat"), "--x=1");
        assert_eq!(program_name(&"a".repeat(40)).len(), 32);
    }

    #[test]
    fn only_timeouts_and_disconnects_may_have_run() {
        assert!(
            SshError::Timeout {
                after: Duration::from_secs(1)
            }
            .command_may_have_run()
        );
        assert!(
            SshError::Disconnected {
                message: String::new()
            }
            .command_may_have_run()
        );
        assert!(!SshError::Auth { user: "u".into() }.command_may_have_run());
        assert!(
            !SshError::ChannelOpen {
                message: String::new()
            }
            .command_may_have_run()
        );
    }

    #[test]
    fn settings_debug_has_no_key_material() {
        let s = SshSettings::new("h", 22, "u", "/k", "/kh");
        let d = format!("{s:?}");
        assert!(d.contains("key_path: \"/k\""));
    }
}
