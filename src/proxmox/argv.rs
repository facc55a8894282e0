//! Argument vectors and their safe conversion into one remote shell command line (§14.2).

use std::fmt;

use super::commands::CommandKind;
use super::error::ProxmoxError;

/// The locale prefix every remote command carries, so PVE decodes arguments as UTF-8 (§0.5).
pub const LOCALE_PREFIX: &str = "LC_ALL=C.UTF-8";

/// An argument vector: program first, then its arguments, each passed verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Argv(Vec<String>);

impl Argv {
    /// Starts a vector with the program name.
    pub fn new(program: &str) -> Self {
        Argv(vec![program.to_string()])
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.0.push(arg.into());
        self
    }

    /// Appends `--key=value` as one element (so a value starting with `-` stays a value).
    pub fn opt(self, key: &str, value: impl fmt::Display) -> Self {
        self.arg(format!("--{key}={value}"))
    }

    /// Appends a boolean option as `--key=1` or `--key=0` (never a bare flag, §0.5).
    pub fn flag(self, key: &str, value: bool) -> Self {
        self.opt(key, u8::from(value))
    }

    /// The elements.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Joins the elements into one shell command: `LC_ALL=C.UTF-8 'qm' 'set' ...`, every
    /// element single-quoted. Fails on NUL, which no shell argument can carry.
    pub fn to_shell_command(&self) -> Result<String, ProxmoxError> {
        if self.0.is_empty() {
            return Err(ProxmoxError::invalid("argv", "empty command"));
        }
        let mut out = String::from(LOCALE_PREFIX);
        for a in &self.0 {
            out.push(' ');
            out.push_str(&quote(a)?);
        }
        Ok(out)
    }
}

/// POSIX single-quotes one word: wraps it in `'` and turns each `'` into `'\''`.
pub fn quote(word: &str) -> Result<String, ProxmoxError> {
    if word.contains('\0') {
        return Err(ProxmoxError::invalid("argv", "NUL byte in an argument"));
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

/// A command ready for the transport: its kind (for classification), the shell text, and
/// optional stdin bytes. Without stdin the transport must send EOF at once (§14.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    /// What it does; selects the error classification.
    pub kind: CommandKind,
    /// The text the remote login shell runs.
    pub script: String,
    /// Bytes to write to the command's stdin, then EOF.
    pub stdin: Option<Vec<u8>>,
}

impl RemoteCommand {
    /// Wraps an argv (quoted, locale-prefixed) with no stdin.
    pub fn from_argv(kind: CommandKind, argv: &Argv) -> Result<Self, ProxmoxError> {
        Ok(RemoteCommand {
            kind,
            script: argv.to_shell_command()?,
            stdin: None,
        })
    }
}

/// A builder's output: the command kind and its argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What it does.
    pub kind: CommandKind,
    /// The argument vector.
    pub argv: Argv,
}

impl Command {
    /// Converts into a [`RemoteCommand`] without stdin.
    pub fn to_remote(&self) -> Result<RemoteCommand, ProxmoxError> {
        RemoteCommand::from_argv(self.kind, &self.argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command as Process;

    /// Runs `script` with `sh -c` after replacing the program with `printf '%s\0'`, and returns
    /// the arguments exactly as the shell delivered them.
    fn delivered(argv: &Argv) -> Vec<String> {
        let mut printed = Argv::new("printf").arg("%s\\0");
        for a in argv.as_slice() {
            printed = printed.arg(a.clone());
        }
        let script = printed.to_shell_command().expect("quotable");
        let out = Process::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "script failed: {script}");
        let text = String::from_utf8(out.stdout).expect("utf8");
        let mut parts: Vec<String> = text.split('\0').map(str::to_string).collect();
        assert_eq!(parts.pop().as_deref(), Some(""), "trailing NUL");
        parts
    }

    #[test]
    fn quoting_round_trips_hostile_strings() {
        let hostile = [
            "plain",
            "",
            "it's",
            "'",
            "''",
            "'\\''",
            "a\"b",
            "$(touch /tmp/pwned)",
            "`id`",
            "${HOME}",
            "a;b && c || d | e",
            "line1\nline2",
            "tab\there",
            "-rf",
            "--description=x",
            "back\\slash",
            "*?[glob]",
            "~root",
            "é ü 中文 🚀",
            "#comment",
            "a b  c",
            "!event",
            "\r\x1b[31m",
        ];
        let mut argv = Argv::new("qm");
        for h in hostile {
            argv = argv.arg(h);
        }
        let got = delivered(&argv);
        let mut want = vec!["qm".to_string()];
        want.extend(hostile.iter().map(|s| s.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn options_are_single_elements() {
        let argv = Argv::new("qm")
            .arg("set")
            .arg("123")
            .opt("description", "-x 'y'\nz")
            .flag("full", true)
            .flag("purge", false);
        assert_eq!(
            argv.as_slice(),
            &[
                "qm",
                "set",
                "123",
                "--description=-x 'y'\nz",
                "--full=1",
                "--purge=0"
            ]
        );
        assert_eq!(delivered(&argv), argv.as_slice());
    }

    #[test]
    fn shell_command_shape() {
        let s = Argv::new("qm")
            .arg("status")
            .arg("100")
            .to_shell_command()
            .expect("ok");
        assert_eq!(s, "LC_ALL=C.UTF-8 'qm' 'status' '100'");
        assert_eq!(quote("it's").expect("ok"), "'it'\\''s'");
    }

    #[test]
    fn nul_is_rejected() {
        let r = Argv::new("qm").arg("a\0b").to_shell_command();
        assert!(matches!(
            r,
            Err(ProxmoxError::InvalidArgument { field: "argv", .. })
        ));
        assert!(Argv::default().to_shell_command().is_err());
    }
}
