//! The `CloudPod` custom resource: one customer virtual machine on Proxmox VE.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::QuotaDetails;

/// Desired state of one customer virtual machine.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cloudpods.migrahosting.com",
    version = "v1alpha1",
    kind = "CloudPod",
    plural = "cloudpods",
    singular = "cloudpod",
    shortname = "cpod",
    category = "cloudpods-all",
    namespaced,
    status = "CloudPodStatus",
    doc = "A CloudPod is one customer virtual machine on Proxmox VE, built from a plan (size) and a blueprint (template).",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId", description = "Tenant that owns the pod"),
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.planCode", description = "Commercial plan"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "VMID", type_ = "integer", json_path = ".status.vmid", description = "Proxmox VM id"),
    printcolumn(name = "IP", type_ = "string", json_path = ".status.ipAddress", description = "Address reported by the guest agent"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.tenantId",
    validation = Rule::new(
        "has(self.spec.hostname) || self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.metadata.name.size() <= 63"
    ).message("metadata.name becomes the VM hostname when spec.hostname is not set, so it must then be a DNS label (lowercase letters, digits and '-', at most 63 characters)"),
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.resources) || !has(oldSelf.resources.diskGb) || (has(self.resources) && has(self.resources.diskGb))"
).message("spec.resources.diskGb cannot be removed once set: disks can only grow"))]
#[serde(rename_all = "camelCase")]
pub struct CloudPodSpec {
    /// Tenant (customer account) that owns this pod. Set once at creation; it cannot change.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.tenantId is immutable: a pod cannot move to another tenant"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.tenantId must be lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub tenant_id: String,

    /// mPanel user that ordered the pod (informational; used for audit and billing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._@:-]+$"))]
    pub user_id: Option<String>,

    /// Commercial plan code (cloud_pod_plans.code), e.g. student, starter, premium, business. Sets the default vCPU, memory and disk.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub plan_code: String,

    /// Blueprint code (cloud_pod_blueprints.code), e.g. ubuntu-24-minimal: which Proxmox template the VM is cloned from.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub blueprint: String,

    /// Guest hostname, a DNS label (lowercase letters, digits and '-', at most 63 characters). Defaults to metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.hostname must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"))]
    #[schemars(length(min = 1, max = 63))]
    pub hostname: Option<String>,

    /// Overrides of the plan's resources. Each field left out takes the plan's value. Changes are quota-checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceOverrides>,

    /// Desired power state of the VM: Running (default) or Stopped.
    #[serde(default)]
    pub power_state: PowerState,

    /// Cloud-init inputs applied at first boot: the login user and its SSH public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,

    /// Request one reboot: set to a new value (for example the current time) and the VM reboots once; status.handledRebootRequest echoes it when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub reboot_request: Option<String>,

    /// Request one backup: set to a new value (for example the current time) and one vzdump backup is taken; status.handledBackupRequest echoes it when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub backup_request: Option<String>,
}

impl CloudPodSpec {
    /// A running pod of `tenant_id` with `plan_code` and `blueprint`, nothing else set.
    pub fn new(tenant_id: &str, plan_code: &str, blueprint: &str) -> Self {
        CloudPodSpec {
            tenant_id: tenant_id.into(),
            user_id: None,
            plan_code: plan_code.into(),
            blueprint: blueprint.into(),
            hostname: None,
            resources: None,
            power_state: PowerState::Running,
            cloud_init: None,
            reboot_request: None,
            backup_request: None,
        }
    }
}

/// Per-pod overrides of the plan's resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOverrides {
    /// Virtual CPU cores (1-64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub cpu_cores: Option<i32>,

    /// Memory in MiB (512-262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 512, max = 262144))]
    pub memory_mb: Option<i32>,

    /// Root disk size in GiB (5-4096). Disks can only grow: a smaller value than before is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("spec.resources.diskGb may only grow: shrinking a disk would destroy data"))]
    #[schemars(range(min = 5, max = 4096))]
    pub disk_gb: Option<i32>,
}

/// Desired or observed power state of a VM.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// The VM should be (or is) running.
    #[default]
    Running,
    /// The VM should be (or is) stopped.
    Stopped,
}

/// Cloud-init inputs for the first boot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudInit {
    /// Login user created by cloud-init (a Linux user name, e.g. "ubuntu"). Defaults to the blueprint's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != 'root'").message("spec.cloudInit.user must not be root"))]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^[a-z_][a-z0-9_-]*$"))]
    pub user: Option<String>,

    /// SSH public keys (OpenSSH one-line format: "ssh-ed25519 AAAA... comment") installed for the user. At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 16, max = 8192),
            regex(
                pattern = r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [ -~]*)?$"
            )
        )
    )]
    pub ssh_public_keys: Vec<String>,
}

/// Lifecycle phase of a CloudPod; one-to-one with the seed's `cloud_pods.status` values.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, waiting for quota admission or for the create job to start (`pending`).
    Pending,
    /// The VM is being cloned, configured and started (`provisioning`).
    Provisioning,
    /// The VM exists and matches the spec (`active`).
    Active,
    /// Something failed; see status.lastError and the conditions (`error`).
    Error,
    /// The VM is being destroyed (`deleting`).
    Deleting,
    /// The VM is gone and the record is kept for billing (`deleted`).
    Deleted,
}

impl Phase {
    /// The seed's `cloud_pods.status` value for this phase.
    pub fn as_db_status(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Provisioning => "provisioning",
            Phase::Active => "active",
            Phase::Error => "error",
            Phase::Deleting => "deleting",
            Phase::Deleted => "deleted",
        }
    }

    /// The phase for a seed `cloud_pods.status` value, if it is one.
    pub fn from_db_status(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Phase::Pending,
            "provisioning" => Phase::Provisioning,
            "active" => Phase::Active,
            "error" => Phase::Error,
            "deleting" => Phase::Deleting,
            "deleted" => Phase::Deleted,
            _ => return None,
        })
    }
}

/// Effective resources of a VM (plan values with overrides applied).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveResources {
    /// Virtual CPU cores.
    pub cpu_cores: i32,
    /// Memory in MiB.
    pub memory_mb: i32,
    /// Root disk size in GiB.
    pub disk_gb: i32,
}

/// The most recent successful backup.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    /// When the backup finished (RFC 3339).
    pub time: String,
    /// Proxmox volume id of the archive, e.g. "local:backup/vzdump-qemu-101-2026_11_27-10_00_00.vma.zst".
    pub volid: String,
    /// The spec.backupRequest value that asked for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// Observed state of a CloudPod, written only by the controller.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudPodStatus {
    /// Lifecycle phase: Pending, Provisioning, Active, Error, Deleting or Deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Internal pod id (cloud_pods.id), e.g. pod-1764399306066.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<String>,
    /// Proxmox VM id, reserved before the clone starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<i32>,
    /// Proxmox node the VM runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// IP address reported by the QEMU guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Resources the VM has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<EffectiveResources>,
    /// Power state observed on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: Ready, QuotaAdmitted, Provisioned, RestartRequired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Quota figures when admission was refused (the seed's checkTenantQuota details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaDetails>,
    /// The most recent successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupInfo>,
    /// The last error, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The spec.rebootRequest value most recently carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reboot_request: Option<String>,
    /// The spec.backupRequest value most recently carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_backup_request: Option<String>,
}
