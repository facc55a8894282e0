//! `pve-sim`: a simulated Proxmox VE node. Dispatches on argv[0]
//! (`qm`, `pvesh`, `vzdump`, `qmrestore`, `pvesm`) or on `pve-sim <admin-command>`.

mod admin;
mod backup;
mod err;
mod faults;
mod opts;
mod pvesh;
mod qm;
mod state;
mod task;
mod util;

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::json;

use crate::err::{CmdError, CmdResult};
use crate::state::Ctx;

struct CallInfo {
    argv: Vec<String>,
    start_ms: u64,
}

static CALL: OnceLock<CallInfo> = OnceLock::new();

/// Print a line on stdout, ignoring a broken pipe.
pub fn outln(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

/// Print text on stdout without newline, ignoring errors.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = write!(o, "{s}");
    let _ = o.flush();
}

/// Print a line on stderr, ignoring errors.
pub fn errln(s: &str) {
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Append this invocation to `<state>/calls.log`.
pub fn log_invocation(dir: &Path, ctx: Option<&Ctx>, exit: Option<i32>, outcome: &str) {
    let Some(c) = CALL.get() else { return };
    let line = json!({
        "argv": c.argv,
        "tool": tool_name(&c.argv),
        "pid": std::process::id(),
        "ppid": util::parent_pid(),
        "start_ms": c.start_ms,
        "end_ms": util::now_ms(),
        "exit": exit,
        "outcome": outcome,
        "key": ctx.map(|c| c.key.clone()),
        "call_no": ctx.map(|c| c.call_no),
        "task_start_ms": ctx.and_then(|c| c.task_start_ms),
        "task_end_ms": ctx.and_then(|c| c.task_end_ms.or(c.task_start_ms.map(|_| util::now_ms()))),
        "upid": ctx.and_then(|c| c.upid.clone()),
    });
    Ctx::log_call(dir, &line);
}

fn tool_name(argv: &[String]) -> String {
    argv.first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default()
}

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = CALL.set(CallInfo {
        argv: argv.clone(),
        start_ms: util::now_ms(),
    });
    let tool = tool_name(&argv);
    let args = &argv[1.min(argv.len())..];
    let code = match tool.as_str() {
        "qm" | "pvesh" | "vzdump" | "qmrestore" | "pvesm" => run_tool(&tool, args),
        _ => match admin::run(args) {
            Ok(c) => c,
            Err(e) => {
                errln(&e.msg);
                e.code
            }
        },
    };
    std::process::exit(code);
}

/// What a tool invocation resolves to before the state is loaded.
pub struct Resolved {
    /// Counter / knob key.
    pub key: String,
    /// Usage line for 400 errors.
    pub usage: String,
}

fn run_tool(tool: &str, args: &[String]) -> i32 {
    let resolved = match tool {
        "qm" => qm::resolve(args),
        "pvesh" => pvesh::resolve(args),
        "pvesm" => pvesh::resolve_pvesm(args),
        "vzdump" => Ok(Resolved {
            key: "vzdump".into(),
            usage: "vzdump {<vmid>} [OPTIONS]".into(),
        }),
        _ => Ok(Resolved {
            key: "qmrestore".into(),
            usage: "qmrestore <archive> <vmid> [OPTIONS]".into(),
        }),
    };
    let Some(dir) = state::resolve_state_dir() else {
        errln(
            "pve-sim: no state directory (set PVE_SIM_STATE, PVE_SIM_ENV_FILE or ~/.pve-sim/env)",
        );
        return 255;
    };
    let r = match resolved {
        Ok(r) => r,
        Err(e) => {
            errln(&e.msg);
            log_invocation(&dir, None, Some(e.code), "usage");
            return e.code;
        }
    };
    let mut ctx = match make_ctx(&dir, &r.key) {
        Ok(c) => c,
        Err(e) => {
            errln(&e.msg);
            log_invocation(&dir, None, Some(e.code), "error");
            return e.code;
        }
    };
    if ctx.faults.hangs(&r.key) && !is_task_key(&r.key) {
        log_invocation(&dir, Some(&ctx), None, "hang");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let res: CmdResult = match tool {
        "qm" => qm::run(&mut ctx, args),
        "pvesh" => pvesh::run(&mut ctx, args),
        "pvesm" => pvesh::run_pvesm(&mut ctx, args),
        "vzdump" => backup::vzdump(&mut ctx, args),
        _ => backup::qmrestore(&mut ctx, args),
    };
    ctx.release_slot();
    let code = match res {
        Ok(c) => c,
        Err(e) => {
            let mut msg = e.msg.clone();
            if e.usage {
                msg.push('\n');
                msg.push_str(&r.usage);
            }
            errln(&msg);
            e.code
        }
    };
    log_invocation(&dir, Some(&ctx), Some(code), "exit");
    code
}

/// Command keys that run as worker tasks (hang inside the task).
pub fn is_task_key(k: &str) -> bool {
    matches!(
        k,
        "clone"
            | "start"
            | "stop"
            | "shutdown"
            | "reboot"
            | "reset"
            | "resize"
            | "destroy"
            | "snapshot"
            | "rollback"
            | "delsnapshot"
            | "template"
            | "vzdump"
            | "qmrestore"
    )
}

fn make_ctx(dir: &Path, key: &str) -> Result<Ctx, CmdError> {
    let node = state::load_node(dir)?;
    let faults = state::load_faults(dir)?;
    let call_no = state::bump_counter(dir, key)?;
    let fail = faults.decide(key, call_no);
    Ok(Ctx::new(
        dir.to_path_buf(),
        node,
        faults,
        key.to_string(),
        call_no,
        fail,
    ))
}
