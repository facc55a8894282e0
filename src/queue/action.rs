//! The queue actions and their text form in `cloud_pod_queue.action`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::Postgres;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};

/// The seed's queue actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Clone and configure a new VM.
    Create,
    /// Remove the VM.
    Destroy,
    /// Power on.
    Start,
    /// Power off.
    Stop,
    /// Restart.
    Reboot,
    /// Take a backup.
    Backup,
    /// Change CPU, memory or disk.
    Scale,
    /// Read the VM's state back.
    Sync,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::Create,
        Action::Destroy,
        Action::Start,
        Action::Stop,
        Action::Reboot,
        Action::Backup,
        Action::Scale,
        Action::Sync,
    ];

    /// The name stored in `cloud_pod_queue.action` ("create", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Destroy => "destroy",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Reboot => "reboot",
            Action::Backup => "backup",
            Action::Scale => "scale",
            Action::Sync => "sync",
        }
    }

    /// The action named `s` (exact, lowercase), if any.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The `cloud_pod_jobs.type` of a job made of this action: `create` is a `provision`.
    pub fn job_type(self) -> &'static str {
        match self {
            Action::Create => "provision",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Stored as TEXT; an unknown name (impossible under the CHECK constraint) is a decode error.
impl sqlx::Type<Postgres> for Action {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, Postgres> for Action {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as sqlx::Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Action {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        Action::parse(s).ok_or_else(|| format!("unknown queue action {s:?}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
            let json = serde_json::to_value(a).unwrap();
            assert_eq!(json, serde_json::Value::String(a.as_str().into()));
            assert_eq!(serde_json::from_value::<Action>(json).unwrap(), a);
        }
        let mut names: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
    }

    #[test]
    fn parse_is_exact() {
        for s in ["", "Create", "CREATE", " create", "provision", "delete"] {
            assert_eq!(Action::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn job_types_match_the_schema() {
        assert_eq!(Action::Create.job_type(), "provision");
        // The CHECK constraint of cloud_pod_jobs.type.
        let allowed = [
            "provision",
            "destroy",
            "scale",
            "start",
            "stop",
            "reboot",
            "backup",
            "sync",
        ];
        for a in Action::ALL {
            assert!(allowed.contains(&a.job_type()), "{a}");
            if a != Action::Create {
                assert_eq!(a.job_type(), a.as_str());
            }
        }
    }
}
