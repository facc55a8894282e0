//! Pure construction of a CloudPod's status from what the controller observed, and the
//! Kubernetes Events a status change deserves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{CloudPodStatus, EffectiveResources, Phase, PowerState, QuotaDetails};
use crate::store::pods::PodRow;
use crate::worker::payload::PodState;

/// Condition types.
pub const READY: &str = "Ready";
/// Quota admission.
pub const QUOTA_ADMITTED: &str = "QuotaAdmitted";
/// The VM was built.
pub const PROVISIONED: &str = "Provisioned";
/// Pending cores/memory need a reboot.
pub const RESTART_REQUIRED: &str = "RestartRequired";
/// A TenantQuota's limits are mirrored into `cloud_pod_quotas`.
pub const SYNCED: &str = "Synced";
/// A TenantQuota's usage is above its limits.
pub const EXCEEDED: &str = "Exceeded";

/// Why a pod has no admitted row.
#[derive(Debug, Clone, PartialEq)]
pub enum NotAdmitted {
    /// The plan or blueprint is unknown or retired; the user must change the spec.
    Invalid {
        /// PascalCase reason, e.g. UnknownPlan.
        reason: &'static str,
        /// What to fix.
        message: String,
    },
    /// The tenant's quota is full.
    Quota {
        /// Seed message.
        message: String,
        /// Seed details.
        details: QuotaDetails,
    },
}

/// Everything a status is made from.
#[derive(Debug, Clone)]
pub struct View<'a> {
    /// metadata.generation.
    pub generation: Option<i64>,
    /// The row, when admitted.
    pub row: Option<&'a PodRow>,
    /// Why there is no row.
    pub refused: Option<&'a NotAdmitted>,
    /// A scale refused by quota.
    pub scale_refused: Option<&'a NotAdmitted>,
    /// Queue items not finished.
    pub pending: usize,
    /// The resource is being deleted.
    pub deleting: bool,
    /// Desired power state.
    pub desired_power: PowerState,
}

/// A condition without generation and transition time (see [`stamp`]).
pub(super) fn cond(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The status for `view`; condition transition times are kept from `previous` when the
/// condition's status did not change, else set to `now`.
pub fn build(
    view: &View<'_>,
    previous: Option<&CloudPodStatus>,
    now: k8s_openapi::jiff::Timestamp,
) -> CloudPodStatus {
    let mut s = CloudPodStatus {
        observed_generation: view.generation,
        ..CloudPodStatus::default()
    };
    let mut conditions = Vec::new();
    match (view.row, view.refused) {
        (None, refused) => {
            let (phase, reason, message, details) = match refused {
                Some(NotAdmitted::Invalid { reason, message }) => {
                    (Phase::Error, *reason, message.clone(), None)
                }
                Some(NotAdmitted::Quota { message, details }) => (
                    Phase::Pending,
                    "QuotaExceeded",
                    message.clone(),
                    Some(details.clone()),
                ),
                None => (
                    Phase::Pending,
                    "Admitting",
                    "waiting for quota admission".to_string(),
                    None,
                ),
            };
            s.phase = Some(if view.deleting {
                Phase::Deleting
            } else {
                phase
            });
            s.quota = details;
            s.last_error = (reason != "Admitting").then(|| message.clone());
            conditions.push(cond(QUOTA_ADMITTED, false, reason, message.clone()));
            conditions.push(cond(
                PROVISIONED,
                false,
                "NotAdmitted",
                "the pod was not admitted",
            ));
            conditions.push(cond(READY, false, reason, message));
        }
        (Some(row), _) => {
            let state = PodState::from_json(&row.provisioning_state);
            let phase = if view.deleting && row.deleted_at.is_none() && row.status != "error" {
                Phase::Deleting
            } else {
                Phase::from_db_status(&row.status).unwrap_or(Phase::Error)
            };
            s.phase = Some(phase);
            s.pod_id = Some(row.id.clone());
            s.vmid = row.vmid;
            s.node = row.node.clone();
            s.ip_address = row.ip_address.clone();
            if state.provisioned {
                s.resources = Some(EffectiveResources {
                    cpu_cores: row.cpu_cores,
                    memory_mb: row.memory_mb,
                    disk_gb: row.disk_gb,
                });
                s.power_state = state.power_state;
            }
            s.last_backup = state.last_backup.clone();
            s.handled_reboot_request = state.handled_reboot_request.clone();
            s.handled_backup_request = state.handled_backup_request.clone();
            s.last_error = state.last_error.clone();
            match view.scale_refused {
                Some(NotAdmitted::Quota { message, details }) => {
                    s.quota = Some(details.clone());
                    s.last_error = Some(message.clone());
                    conditions.push(cond(
                        QUOTA_ADMITTED,
                        false,
                        "ScaleQuotaExceeded",
                        format!("the new size does not fit the tenant's quota: {message}"),
                    ));
                }
                _ => conditions.push(cond(
                    QUOTA_ADMITTED,
                    true,
                    "Admitted",
                    "the pod fits the tenant's quota",
                )),
            }
            conditions.push(if state.provisioned {
                cond(
                    PROVISIONED,
                    true,
                    "VmCreated",
                    format!(
                        "VM {} on node {}",
                        row.vmid.map_or_else(|| "?".into(), |v| v.to_string()),
                        row.node.as_deref().unwrap_or("?")
                    ),
                )
            } else if phase == Phase::Error {
                cond(
                    PROVISIONED,
                    false,
                    "CreateFailed",
                    state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the VM could not be built".into()),
                )
            } else {
                cond(PROVISIONED, false, "Provisioning", "the VM is being built")
            });
            let (ready, reason, message) = match phase {
                Phase::Active if view.pending > 0 => (
                    false,
                    "Reconciling",
                    "an operation on the VM is in progress".to_string(),
                ),
                Phase::Active if view.desired_power == PowerState::Stopped => (
                    true,
                    "Stopped",
                    "the VM is stopped as requested".to_string(),
                ),
                Phase::Active if row.ip_address.is_none() => (
                    false,
                    "WaitingForAddress",
                    "the VM runs; waiting for the guest agent to report an address".to_string(),
                ),
                Phase::Active => (
                    true,
                    "Running",
                    "the VM runs and has an address".to_string(),
                ),
                Phase::Error => (
                    false,
                    "Error",
                    state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the last operation failed".into()),
                ),
                Phase::Pending | Phase::Provisioning => {
                    (false, "Provisioning", "the VM is being built".to_string())
                }
                Phase::Deleting => (false, "Deleting", "the VM is being destroyed".to_string()),
                Phase::Deleted => (false, "Deleted", "the VM was destroyed".to_string()),
            };
            conditions.push(cond(READY, ready, reason, message));
            conditions.push(if state.restart_required {
                cond(
                    RESTART_REQUIRED,
                    true,
                    "PendingChanges",
                    "new cores/memory apply at the next reboot: set spec.rebootRequest to a new value",
                )
            } else {
                cond(RESTART_REQUIRED, false, "UpToDate", "no changes wait for a reboot")
            });
        }
    }
    stamp(
        &mut conditions,
        previous.map(|p| p.conditions.as_slice()),
        view.generation,
        now,
    );
    s.conditions = conditions;
    s
}

/// Sets `generation` on every condition, and its transition time: kept from the condition
/// of the same type in `previous` when the status did not change, else `now`.
pub(super) fn stamp(
    conditions: &mut [Condition],
    previous: Option<&[Condition]>,
    generation: Option<i64>,
    now: k8s_openapi::jiff::Timestamp,
) {
    for c in conditions {
        c.observed_generation = generation;
        c.last_transition_time = previous
            .and_then(|p| p.iter().find(|o| o.type_ == c.type_))
            .filter(|o| o.status == c.status)
            .map_or_else(|| Time(now), |o| o.last_transition_time.clone());
    }
}

/// One Kubernetes Event worth publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Human text.
    pub message: String,
}

/// Events for the change from `old` to `new`: phase transitions, refusals, restarts needed.
pub fn notes(old: Option<&CloudPodStatus>, new: &CloudPodStatus) -> Vec<Note> {
    let mut out = Vec::new();
    let old_phase = old.and_then(|o| o.phase);
    if new.phase != old_phase
        && let Some(phase) = new.phase
    {
        let (warning, reason, message) = match phase {
            Phase::Pending => (false, "Pending", "waiting for admission".to_string()),
            Phase::Provisioning => (
                false,
                "Provisioning",
                format!(
                    "building VM {} on {}",
                    new.vmid.map_or_else(|| "?".into(), |v| v.to_string()),
                    new.node.as_deref().unwrap_or("?")
                ),
            ),
            Phase::Active => (false, "Active", "the VM is up".to_string()),
            Phase::Error => (
                true,
                "Failed",
                new.last_error.clone().unwrap_or_else(|| "failed".into()),
            ),
            Phase::Deleting => (false, "Deleting", "destroying the VM".to_string()),
            Phase::Deleted => (false, "Deleted", "the VM was destroyed".to_string()),
        };
        out.push(Note {
            warning,
            reason: reason.into(),
            message,
        });
    }
    let cond_of = |s: Option<&CloudPodStatus>, t: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    for t in [QUOTA_ADMITTED, RESTART_REQUIRED] {
        let before = cond_of(old, t);
        let after = cond_of(Some(new), t);
        if before != after
            && let Some(c) = new.conditions.iter().find(|c| c.type_ == t)
        {
            let warning = (t == QUOTA_ADMITTED && c.status == "False")
                || (t == RESTART_REQUIRED && c.status == "True");
            if t == RESTART_REQUIRED && c.status == "False" && before.is_none() {
                continue;
            }
            out.push(Note {
                warning,
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(refused: Option<&'a NotAdmitted>) -> View<'a> {
        View {
            generation: Some(3),
            row: None,
            refused,
            scale_refused: None,
            pending: 0,
            deleting: false,
            desired_power: PowerState::Running,
        }
    }

    #[test]
    fn refusal_carries_details_and_keeps_transition_times() {
        let details = QuotaDetails {
            max_pods: 3,
            current_pods: 3,
            requested_pods: 1,
            error_field: Some("pods".into()),
            error_code: Some("POD_LIMIT_EXCEEDED".into()),
            ..QuotaDetails::default()
        };
        let refused = NotAdmitted::Quota {
            message: "Quota exceeded".into(),
            details: details.clone(),
        };
        let t1 = k8s_openapi::jiff::Timestamp::from_second(1000).unwrap();
        let t2 = k8s_openapi::jiff::Timestamp::from_second(2000).unwrap();
        let a = build(&view(Some(&refused)), None, t1);
        assert_eq!(a.phase, Some(Phase::Pending));
        assert_eq!(a.quota, Some(details));
        assert_eq!(a.observed_generation, Some(3));
        let q = a
            .conditions
            .iter()
            .find(|c| c.type_ == QUOTA_ADMITTED)
            .unwrap();
        assert_eq!(
            (q.status.as_str(), q.reason.as_str()),
            ("False", "QuotaExceeded")
        );
        let b = build(&view(Some(&refused)), Some(&a), t2);
        assert_eq!(a, b, "nothing changed: identical status, times kept");
        let n = notes(None, &a);
        assert!(n.iter().any(|n| n.reason == "QuotaExceeded" && n.warning));
        assert!(notes(Some(&a), &b).is_empty());
    }

    #[test]
    fn invalid_spec_is_an_error_phase_with_a_reason() {
        let bad = NotAdmitted::Invalid {
            reason: "UnknownPlan",
            message: "plan `gold` does not exist".into(),
        };
        let s = build(
            &view(Some(&bad)),
            None,
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.phase, Some(Phase::Error));
        assert_eq!(s.last_error.as_deref(), Some("plan `gold` does not exist"));
        let r = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(r.reason, "UnknownPlan");
    }
}
