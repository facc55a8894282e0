//! Test harness: a temp state dir + bin dir with the tool symlinks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static N: AtomicU32 = AtomicU32::new(0);

pub struct Sim {
    pub root: PathBuf,
    pub bin: PathBuf,
    pub state: PathBuf,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pve-sim"))
}

impl Sim {
    pub fn new(node: &str) -> Sim {
        Self::with_init(node, &[])
    }

    pub fn with_init(node: &str, extra: &[&str]) -> Sim {
        let root = std::env::temp_dir().join(format!(
            "pve-sim-test-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let bin = root.join("bin");
        let state = root.join("state");
        std::fs::create_dir_all(&root).unwrap();
        let mut init = Command::new(exe());
        init.args(["init", "--state"])
            .arg(&state)
            .args(["--node", node])
            .args(extra);
        let o = init.output().unwrap();
        assert!(
            o.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = Command::new(exe())
            .args(["install", "--bin-dir"])
            .arg(&bin)
            .output()
            .unwrap();
        assert!(o.status.success());
        Sim { root, bin, state }
    }

    pub fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.args(args)
            .env("PVE_SIM_STATE", &self.state)
            .env_remove("PVE_SIM_ENV_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, tool: &str, args: &[&str]) -> Out {
        Out::from(self.cmd(tool, args).output().unwrap())
    }

    pub fn spawn(&self, tool: &str, args: &[&str]) -> Child {
        self.cmd(tool, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn qm(&self, args: &[&str]) -> Out {
        self.run("qm", args)
    }

    pub fn ok(&self, tool: &str, args: &[&str]) -> Out {
        let o = self.run(tool, args);
        assert_eq!(
            o.code, 0,
            "{tool} {args:?} failed: stdout={} stderr={}",
            o.stdout, o.stderr
        );
        o
    }

    pub fn faults(&self, v: Value) {
        std::fs::write(self.state.join("faults.json"), v.to_string()).unwrap();
    }

    pub fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--output-format", "json"]);
        let o = self.ok("pvesh", &a);
        serde_json::from_str(o.stdout.trim()).unwrap()
    }

    pub fn config(&self, vmid: u32) -> Value {
        self.json(&[&format!("/nodes/localhost/qemu/{vmid}/config")])
    }

    pub fn vm_file(&self, vmid: u32) -> Option<Value> {
        std::fs::read_to_string(self.state.join("qemu-server").join(format!("{vmid}.json")))
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Poll `f` until it returns Some or the deadline passes.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
