//! What the controller puts into a queue item's `payload` and what the worker records in
//! `cloud_pods.provisioning_state`: the contract between the two, as plain serde types.

use serde::{Deserialize, Serialize};

use crate::crd::{BackupInfo, PowerState};

/// Resources a VM should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Size {
    /// vCPU cores.
    pub cpu_cores: i32,
    /// Memory in MiB.
    pub memory_mb: i32,
    /// Root disk in GiB.
    pub disk_gb: i32,
}

/// `create`: everything needed to build the VM (the row holds ids, the spec the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePayload {
    /// The size to build.
    pub size: Size,
    /// Guest hostname (the VM name).
    pub hostname: String,
    /// Template VMID of the blueprint.
    pub template_vmid: i32,
    /// The blueprint's home node (where its template lives).
    pub template_node: String,
    /// Storage for the VM's disks.
    pub storage: String,
    /// Cloud-init login user (None: the template's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_user: Option<String>,
    /// SSH public keys for the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Power state after the build.
    pub power_state: PowerState,
    /// The CloudPod generation this was planned for.
    pub generation: i64,
}

/// `scale`: the new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalePayload {
    /// Target size.
    pub size: Size,
    /// The CloudPod generation this was planned for.
    pub generation: i64,
}

/// `reboot` and `backup`: the spec request value being carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPayload {
    /// spec.rebootRequest / spec.backupRequest.
    pub request: String,
}

/// `start`, `stop`, `sync`: the desired power state (sync also restores the recorded size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PowerPayload {
    /// Desired power state.
    pub power_state: PowerState,
}

/// The worker's notes on a pod, kept in `cloud_pods.provisioning_state` (a JSON object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Power state last observed or set by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// Cores/memory changed on a running VM: effective after the next reboot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_required: bool,
    /// The last spec.rebootRequest carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reboot_request: Option<String>,
    /// The last spec.backupRequest carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_backup_request: Option<String>,
    /// The most recent successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupInfo>,
    /// The last error, in words a user can act on (cleared by the next success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the worker last compared the VM with the record (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// True once a create finished: the VM was built at least once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisioned: bool,
}

impl PodState {
    /// Reads the notes from the column (unknown keys are ignored, a broken value is empty).
    pub fn from_json(v: &serde_json::Value) -> Self {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// The column value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({}))
    }
}
