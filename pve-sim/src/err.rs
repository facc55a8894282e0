//! Command error type: what goes to stderr and the exit code.

/// A failed command: the stderr text (without trailing newline) and exit code.
#[derive(Debug, Clone)]
pub struct CmdError {
    /// Message printed on stderr.
    pub msg: String,
    /// Process exit code.
    pub code: i32,
    /// Whether the dispatcher should append the command's usage line (400 errors).
    pub usage: bool,
}

impl CmdError {
    /// A plain Perl-style `die`: message on stderr, exit 255.
    pub fn die(msg: impl Into<String>) -> Self {
        CmdError {
            msg: msg.into(),
            code: 255,
            usage: false,
        }
    }

    /// `400 Parameter verification failed.` with one `param: reason` line.
    pub fn param(name: &str, reason: impl AsRef<str>) -> Self {
        CmdError {
            msg: format!(
                "400 Parameter verification failed.\n{name}: {}",
                reason.as_ref()
            ),
            code: 255,
            usage: true,
        }
    }

    /// A bare 400 error such as `400 not enough arguments`.
    pub fn bad_request(msg: impl AsRef<str>) -> Self {
        CmdError {
            msg: format!("400 {}", msg.as_ref()),
            code: 255,
            usage: true,
        }
    }

    /// Override the exit code.
    pub fn with_code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
}

/// Result alias used by every command; `Ok` carries the exit code.
pub type CmdResult = Result<i32, CmdError>;
