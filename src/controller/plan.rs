//! Pure decisions of the CloudPod controller: the size a spec asks for, and the one next
//! queue action for a pod given its record. No I/O here; unit-tested below.

use std::time::Duration;

use crate::crd::{CloudPodSpec, PowerState};
use crate::queue::Action;
use crate::store::pods::PlanRow;
use crate::worker::payload::{PodState, Size};

/// The size a spec asks for: the plan's, with the spec's overrides. A disk never shrinks
/// below `floor_disk` (what the VM has), whatever the plan says.
pub fn desired_size(plan: &PlanRow, spec: &CloudPodSpec, floor_disk: Option<i32>) -> Size {
    let o = spec.resources.clone().unwrap_or_default();
    let disk = o.disk_gb.unwrap_or(plan.storage_gb);
    Size {
        cpu_cores: o.cpu_cores.unwrap_or(plan.vcpu),
        memory_mb: o.memory_mb.unwrap_or(plan.ram_mb),
        disk_gb: floor_disk.map_or(disk, |f| disk.max(f)),
    }
}

/// What the controller knows about a pod with a live row.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// `cloud_pods.status`.
    pub status: &'a str,
    /// Effective size.
    pub effective: Size,
    /// The size the spec asks for.
    pub desired: Size,
    /// The worker's notes.
    pub state: &'a PodState,
    /// Whether an address is recorded.
    pub has_ip: bool,
    /// The spec.
    pub spec: &'a CloudPodSpec,
    /// Queue items not finished yet.
    pub pending: usize,
    /// A reboot item for spec.rebootRequest exists already (any status).
    pub reboot_seen: bool,
    /// A backup item for spec.backupRequest exists already (any status).
    pub backup_seen: bool,
    /// Time since the last finished item failed (None: the last one did not fail).
    pub since_failure: Option<Duration>,
    /// The last failure was planned for an older generation than the current one.
    pub failure_outdated: bool,
    /// Time since the worker last synced (None: never).
    pub since_sync: Option<Duration>,
}

/// Pacing of the controller's decisions.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// How often an active pod is compared with Proxmox.
    pub sync_interval: Duration,
    /// How long a failed pod waits before the next attempt (a spec change retries at once).
    pub error_retry: Duration,
    /// How often a missing address is asked for again.
    pub address_retry: Duration,
}

/// The next step for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An item is queued or running; its end re-triggers the reconcile.
    Wait,
    /// Enqueue this action.
    Enqueue(Action),
    /// The size differs: admit the growth, then enqueue a scale.
    Scale(Size),
    /// Nothing to do until then.
    Idle(Duration),
}

/// The next step (one at a time: each finished item triggers the next decision).
pub fn next_step(i: &Inputs<'_>, p: &Pacing) -> Step {
    if i.pending > 0 {
        return Step::Wait;
    }
    let due = |since: Option<Duration>, every: Duration| since.is_none_or(|s| s >= every);
    match i.status {
        "pending" | "provisioning" => Step::Enqueue(Action::Create),
        "error" => {
            let retry_due = i.failure_outdated || due(i.since_failure, p.error_retry);
            if !retry_due {
                let left = p
                    .error_retry
                    .saturating_sub(i.since_failure.unwrap_or_default());
                return Step::Idle(left.max(Duration::from_secs(1)));
            }
            if i.state.provisioned {
                Step::Enqueue(Action::Sync)
            } else {
                Step::Enqueue(Action::Create)
            }
        }
        "active" => {
            if i.desired != i.effective {
                return Step::Scale(i.desired);
            }
            let power = i.state.power_state.unwrap_or(PowerState::Running);
            if power != i.spec.power_state {
                return Step::Enqueue(match i.spec.power_state {
                    PowerState::Running => Action::Start,
                    PowerState::Stopped => Action::Stop,
                });
            }
            if let Some(r) = &i.spec.reboot_request
                && i.state.handled_reboot_request.as_ref() != Some(r)
                && !i.reboot_seen
            {
                return Step::Enqueue(Action::Reboot);
            }
            if let Some(r) = &i.spec.backup_request
                && i.state.handled_backup_request.as_ref() != Some(r)
                && !i.backup_seen
            {
                return Step::Enqueue(Action::Backup);
            }
            let every = if !i.has_ip && i.spec.power_state == PowerState::Running {
                p.address_retry.min(p.sync_interval)
            } else {
                p.sync_interval
            };
            if due(i.since_sync, every) {
                return Step::Enqueue(Action::Sync);
            }
            Step::Idle(every.saturating_sub(i.since_sync.unwrap_or_default()))
        }
        // deleting/deleted are the cleanup path's.
        _ => Step::Idle(p.sync_interval),
    }
}

/// What a scale must be admitted for: the growth over what the pod holds already (its
/// effective size, or a larger reservation), per resource, never negative.
pub fn growth(desired: Size, held: Size) -> Size {
    Size {
        cpu_cores: (desired.cpu_cores - held.cpu_cores).max(0),
        memory_mb: (desired.memory_mb - held.memory_mb).max(0),
        disk_gb: (desired.disk_gb - held.disk_gb).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ResourceOverrides;

    fn plan() -> PlanRow {
        PlanRow {
            code: "starter".into(),
            name: "Starter".into(),
            description: String::new(),
            price_monthly: 9.99,
            vcpu: 1,
            ram_mb: 2048,
            storage_gb: 40,
            bandwidth_gb: Some(1000),
            bandwidth_type: "metered".into(),
            is_active: true,
            max_pods_per_tenant: None,
        }
    }

    fn spec() -> CloudPodSpec {
        CloudPodSpec::new("acme", "starter", "ubuntu-24-minimal")
    }

    const SIZE: Size = Size {
        cpu_cores: 1,
        memory_mb: 2048,
        disk_gb: 40,
    };

    fn pacing() -> Pacing {
        Pacing {
            sync_interval: Duration::from_secs(300),
            error_retry: Duration::from_secs(60),
            address_retry: Duration::from_secs(10),
        }
    }

    fn inputs<'a>(status: &'a str, state: &'a PodState, spec: &'a CloudPodSpec) -> Inputs<'a> {
        Inputs {
            status,
            effective: SIZE,
            desired: SIZE,
            state,
            has_ip: true,
            spec,
            pending: 0,
            reboot_seen: false,
            backup_seen: false,
            since_failure: None,
            failure_outdated: false,
            since_sync: Some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn overrides_win_and_disks_never_shrink() {
        let mut s = spec();
        s.resources = Some(ResourceOverrides {
            cpu_cores: Some(2),
            memory_mb: None,
            disk_gb: Some(30),
        });
        assert_eq!(
            desired_size(&plan(), &s, None),
            Size {
                cpu_cores: 2,
                memory_mb: 2048,
                disk_gb: 30
            }
        );
        assert_eq!(desired_size(&plan(), &s, Some(40)).disk_gb, 40);
    }

    #[test]
    fn one_step_at_a_time_in_order() {
        let state = PodState {
            power_state: Some(PowerState::Running),
            provisioned: true,
            ..PodState::default()
        };
        let mut s = spec();
        let p = pacing();
        assert_eq!(
            next_step(&inputs("pending", &state, &s), &p),
            Step::Enqueue(Action::Create)
        );
        let mut i = inputs("active", &state, &s);
        i.pending = 1;
        assert_eq!(next_step(&i, &p), Step::Wait);
        assert!(matches!(
            next_step(&inputs("active", &state, &s), &p),
            Step::Idle(_)
        ));
        s.power_state = PowerState::Stopped;
        s.reboot_request = Some("r1".into());
        let mut i = inputs("active", &state, &s);
        i.desired.cpu_cores = 2;
        assert_eq!(next_step(&i, &p), Step::Scale(i.desired));
        assert_eq!(
            next_step(&inputs("active", &state, &s), &p),
            Step::Enqueue(Action::Stop)
        );
        s.power_state = PowerState::Running;
        assert_eq!(
            next_step(&inputs("active", &state, &s), &p),
            Step::Enqueue(Action::Reboot)
        );
        let mut i = inputs("active", &state, &s);
        i.reboot_seen = true;
        assert!(
            matches!(next_step(&i, &p), Step::Idle(_)),
            "each request once"
        );
        s.reboot_request = None;
        s.backup_request = Some("b1".into());
        assert_eq!(
            next_step(&inputs("active", &state, &s), &p),
            Step::Enqueue(Action::Backup)
        );
        let handled = PodState {
            handled_backup_request: Some("b1".into()),
            ..state.clone()
        };
        assert!(matches!(
            next_step(&inputs("active", &handled, &s), &p),
            Step::Idle(_)
        ));
    }

    #[test]
    fn syncs_when_due_and_sooner_without_an_address() {
        let state = PodState {
            provisioned: true,
            ..PodState::default()
        };
        let s = spec();
        let p = pacing();
        let mut i = inputs("active", &state, &s);
        i.since_sync = Some(Duration::from_secs(301));
        assert_eq!(next_step(&i, &p), Step::Enqueue(Action::Sync));
        i.since_sync = Some(Duration::from_secs(11));
        assert!(matches!(next_step(&i, &p), Step::Idle(_)));
        i.has_ip = false;
        assert_eq!(next_step(&i, &p), Step::Enqueue(Action::Sync));
    }

    #[test]
    fn errors_wait_unless_the_spec_changed() {
        let never = PodState::default();
        let s = spec();
        let p = pacing();
        let mut i = inputs("error", &never, &s);
        i.since_failure = Some(Duration::from_secs(5));
        assert!(matches!(next_step(&i, &p), Step::Idle(d) if d == Duration::from_secs(55)));
        i.failure_outdated = true;
        assert_eq!(next_step(&i, &p), Step::Enqueue(Action::Create));
        let built = PodState {
            provisioned: true,
            ..PodState::default()
        };
        let mut i = inputs("error", &built, &s);
        i.since_failure = Some(Duration::from_secs(61));
        assert_eq!(next_step(&i, &p), Step::Enqueue(Action::Sync));
    }

    #[test]
    fn growth_counts_only_what_grows() {
        let g = growth(
            Size {
                cpu_cores: 4,
                memory_mb: 1024,
                disk_gb: 40,
            },
            SIZE,
        );
        assert_eq!(
            g,
            Size {
                cpu_cores: 3,
                memory_mb: 0,
                disk_gb: 0
            }
        );
    }
}
