//! Helpers for tests of `SshProxmox` (the `Proxmox` trait over SSH) against a private sshd in
//! front of one simulated node, `pve1` ([`PveEnv`]), and the values those tests build.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudpods::proxmox::driver::{DriverSettings, SshProxmox};
use cloudpods::proxmox::ssh::SshNode;
use cloudpods::proxmox::{
    Applied, CloneMode, CloneSpec, DnsName, JobId, NodeName, OwnershipMarker, PodId, Proxmox,
    RemoteDir, TenantId, Vmid,
};
use serde_json::Value;

use super::ssh::PrivateSshd;

/// The template every fresh simulated node has.
pub const TEMPLATE: u32 = 9000;

/// Fast polling, short retries: tests should not wait on production pacing.
pub fn fast_settings() -> DriverSettings {
    use cloudpods::proxmox::driver::RetryPolicy;
    DriverSettings {
        read_timeout: Duration::from_secs(15),
        action_timeout: Duration::from_secs(30),
        job_deadline: Duration::from_secs(60),
        poll_interval: Duration::from_millis(50),
        max_poll_interval: Duration::from_millis(300),
        retry: RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        },
        ..DriverSettings::default()
    }
}

/// The one node of a [`PveEnv`].
pub fn node() -> NodeName {
    NodeName::parse("pve1").expect("node")
}

/// A VMID that is known to be valid.
pub fn vmid(n: u32) -> Vmid {
    Vmid::new(n).expect("vmid")
}

/// A job id that is known to be valid.
pub fn job(s: &str) -> JobId {
    JobId::parse(s).expect("job id")
}

/// The ownership marker of pod `pod-<pod>` of tenant `acme`.
pub fn marker(pod: &str) -> OwnershipMarker {
    OwnershipMarker::new(
        PodId::parse(&format!("pod-{pod}")).expect("pod"),
        TenantId::parse("acme").expect("tenant"),
    )
}

/// A linked clone of [`TEMPLATE`] into `target`, named `web-<target>`, marked for `pod-<pod>`.
pub fn clone_spec(target: u32, pod: &str) -> CloneSpec {
    CloneSpec {
        source: vmid(TEMPLATE),
        target: vmid(target),
        mode: CloneMode::Linked,
        name: DnsName::parse(&format!("web-{target}")).expect("name"),
        description: marker(pod).description(Some("test VM")).expect("desc"),
        target_node: None,
    }
}

/// A private sshd with node `pve1` (fresh state) and a driver for it.
pub struct PveEnv {
    /// The sshd instance.
    pub sshd: PrivateSshd,
    /// The driver, with `pve1` only.
    pub pve: SshProxmox,
    /// The node's state directory as the node sees it (`$PVE_SIM_STATE`).
    state: PathBuf,
}

impl PveEnv {
    /// Starts the instance; detached job files go into the node's own state directory.
    pub async fn start(settings: DriverSettings) -> PveEnv {
        let sshd = PrivateSshd::start(&["pve1"]);
        let ssh = SshNode::new(sshd.settings("pve1"));
        let out = ssh
            .exec(
                "printf %s \"$PVE_SIM_STATE\"",
                None,
                Duration::from_secs(20),
            )
            .await
            .expect("read PVE_SIM_STATE");
        let state = out.stdout_lossy();
        let dir = RemoteDir::parse(&state).expect("state dir");
        let pve = SshProxmox::new(settings).with_node_in(node(), ssh, dir);
        PveEnv {
            sshd,
            pve,
            state: PathBuf::from(state),
        }
    }

    /// Clones the template into `target` for `pod-<pod>` ([`clone_spec`], job `clone-<target>`).
    pub async fn clone_template(&self, target: u32, pod: &str) -> Applied {
        self.pve
            .clone_vm(
                &node(),
                &job(&format!("clone-{target}")),
                &clone_spec(target, pod),
            )
            .await
            .expect("clone")
    }

    /// The node's state directory (the same path here and on the node).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Replaces the node's fault knobs (`faults.json`, read by every simulator call).
    pub fn set_faults(&self, faults: Value) {
        let tmp = self.state.join("faults.json.new");
        std::fs::write(&tmp, faults.to_string()).expect("write faults");
        std::fs::rename(&tmp, self.state.join("faults.json")).expect("rename faults");
    }

    /// The argv of every simulator invocation so far whose argv starts with `prefix`.
    pub fn calls(&self, prefix: &[&str]) -> Vec<Vec<String>> {
        self.sshd
            .calls("pve1")
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("calls.log line"))
            .filter_map(|v| {
                let argv: Vec<String> = v["argv"]
                    .as_array()?
                    .iter()
                    .map(|a| a.as_str().unwrap_or_default().to_string())
                    .collect();
                (argv.len() >= prefix.len() && argv.iter().zip(prefix).all(|(a, p)| a == p))
                    .then_some(argv)
            })
            .collect()
    }

    /// The simulator's stored config of a VM (raw values).
    pub fn stored_conf(&self, vmid: u32) -> Value {
        let path = self.state.join(format!("qemu-server/{vmid}.json"));
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("vm state")).expect("json");
        v["conf"].clone()
    }
}
