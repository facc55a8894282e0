//! The quota rules (seed §4.3) and the one transaction that admits.
//!
//! Limits come from `cloud_pod_quotas` (mirrored from the TenantQuota resources) or, when a
//! tenant has no row, from the configured defaults. Usage is summed from the tenant's live
//! `cloud_pods` rows, counting for each pod the larger of its effective and its reserved
//! (admitted but not yet applied) resources. Admission takes a per-tenant advisory lock inside
//! one transaction, checks, and records the reservation before committing, so concurrent
//! orders can never overshoot a limit.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::crd::{QuotaDetails, QuotaUsage};
use crate::store::StoreError;
use crate::store::pods::count_live_on_plan;

/// A tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimits {
    /// Maximum live pods.
    pub max_pods: i64,
    /// Maximum vCPU cores.
    pub max_cpu_cores: i64,
    /// Maximum memory in MiB.
    pub max_memory_mb: i64,
    /// Maximum disk in GiB.
    pub max_disk_gb: i64,
}

impl QuotaLimits {
    /// The seed's global defaults: 2 pods, 4 cores, 8192 MB, 200 GB.
    pub const SEED_DEFAULTS: QuotaLimits = QuotaLimits {
        max_pods: 2,
        max_cpu_cores: 4,
        max_memory_mb: 8192,
        max_disk_gb: 200,
    };
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self::SEED_DEFAULTS
    }
}

/// Where a tenant's limits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum QuotaSource {
    /// No TenantQuota: the configured defaults.
    Default,
    /// The tenant's TenantQuota (via `cloud_pod_quotas`).
    TenantQuota,
}

/// Resources asked for by one order or one scale (already the delta for a scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requested {
    /// Pods.
    pub pods: i64,
    /// vCPU cores.
    pub cpu_cores: i64,
    /// Memory in MiB.
    pub memory_mb: i64,
    /// Disk in GiB.
    pub disk_gb: i64,
}

/// The result of `checkTenantQuota`: the seed's `{ allowed, message?, details? }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaCheck {
    /// True when the request fits.
    pub allowed: bool,
    /// Why it does not fit (absent when allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Limits, current usage and the request, always present.
    pub details: QuotaDetails,
}

/// `getQuotaSummary`: limits, usage and what is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSummary {
    /// The tenant.
    pub tenant_id: String,
    /// Where the limits came from.
    pub source: QuotaSource,
    /// The limits.
    pub limits: QuotaLimits,
    /// What the live pods hold now.
    pub usage: QuotaUsage,
    /// Limits minus usage, never below zero.
    pub available: QuotaUsage,
}

/// Pure `checkTenantQuota`: does `requested` fit on top of `usage` within `limits`?
///
/// Pods are checked first, then cores, memory and disk; the first limit exceeded names
/// `error_field` / `error_code` in the details.
pub fn check(limits: &QuotaLimits, usage: &QuotaUsage, requested: &Requested) -> QuotaCheck {
    let mut details = QuotaDetails {
        max_pods: limits.max_pods,
        current_pods: usage.pods,
        requested_pods: requested.pods,
        max_cpu_cores: limits.max_cpu_cores,
        current_cpu_cores: usage.cpu_cores,
        requested_cpu_cores: requested.cpu_cores,
        max_memory_mb: limits.max_memory_mb,
        current_memory_mb: usage.memory_mb,
        requested_memory_mb: requested.memory_mb,
        max_disk_gb: limits.max_disk_gb,
        current_disk_gb: usage.disk_gb,
        requested_disk_gb: requested.disk_gb,
        error_field: None,
        error_code: None,
    };
    let checks = [
        (
            "pods",
            "POD_LIMIT_EXCEEDED",
            "pods",
            limits.max_pods,
            usage.pods,
            requested.pods,
        ),
        (
            "cpu_cores",
            "CPU_LIMIT_EXCEEDED",
            "vCPU cores",
            limits.max_cpu_cores,
            usage.cpu_cores,
            requested.cpu_cores,
        ),
        (
            "memory_mb",
            "MEMORY_LIMIT_EXCEEDED",
            "MB of memory",
            limits.max_memory_mb,
            usage.memory_mb,
            requested.memory_mb,
        ),
        (
            "disk_gb",
            "DISK_LIMIT_EXCEEDED",
            "GB of disk",
            limits.max_disk_gb,
            usage.disk_gb,
            requested.disk_gb,
        ),
    ];
    for (field, code, unit, max, current, asked) in checks {
        // A request that does not grow this resource never fails on it, even when the tenant
        // is already above a lowered limit.
        if asked > 0 && current.saturating_add(asked) > max {
            details.error_field = Some(field.to_string());
            details.error_code = Some(code.to_string());
            return QuotaCheck {
                allowed: false,
                message: Some(format!(
                    "Quota exceeded: {current} of {max} {unit} in use, {asked} more requested"
                )),
                details,
            };
        }
    }
    QuotaCheck {
        allowed: true,
        message: None,
        details,
    }
}

/// The `error_code` of a refusal by a plan's per-tenant cap (part of the REST contract).
pub const PLAN_POD_LIMIT_EXCEEDED: &str = "PLAN_POD_LIMIT_EXCEEDED";

/// Pure plan cap check: a tenant holding `on_plan` live pods on plan `plan_code`, whose plan
/// allows `cap` per tenant, cannot order one more. `details` are those of the quota check
/// that passed; a refusal names `pods` / `PLAN_POD_LIMIT_EXCEEDED` in them.
pub fn check_plan_cap(
    plan_code: &str,
    cap: i32,
    on_plan: i64,
    details: &QuotaDetails,
) -> QuotaCheck {
    if on_plan < i64::from(cap) {
        return QuotaCheck {
            allowed: true,
            message: None,
            details: details.clone(),
        };
    }
    let mut details = details.clone();
    details.error_field = Some("pods".into());
    details.error_code = Some(PLAN_POD_LIMIT_EXCEEDED.into());
    QuotaCheck {
        allowed: false,
        message: Some(format!(
            "Quota exceeded: plan `{plan_code}` allows {cap} pods per tenant"
        )),
        details,
    }
}

/// Limits minus usage, floored at zero.
pub fn available(limits: &QuotaLimits, usage: &QuotaUsage) -> QuotaUsage {
    QuotaUsage {
        pods: (limits.max_pods - usage.pods).max(0),
        cpu_cores: (limits.max_cpu_cores - usage.cpu_cores).max(0),
        memory_mb: (limits.max_memory_mb - usage.memory_mb).max(0),
        disk_gb: (limits.max_disk_gb - usage.disk_gb).max(0),
    }
}

/// The quota service: the configured defaults plus the database.
#[derive(Debug, Clone)]
pub struct Quotas {
    pool: PgPool,
    defaults: QuotaLimits,
}

impl Quotas {
    /// A quota service over `pool` with `defaults` for tenants without a TenantQuota.
    pub fn new(pool: PgPool, defaults: QuotaLimits) -> Self {
        Self { pool, defaults }
    }

    /// The defaults in force.
    pub fn defaults(&self) -> QuotaLimits {
        self.defaults
    }

    /// `getTenantQuota`: the tenant's limits and where they came from.
    pub async fn get_tenant_quota(
        &self,
        tenant_id: &str,
    ) -> Result<(QuotaLimits, QuotaSource), StoreError> {
        let mut conn = self.acquire().await?;
        limits_on(&mut conn, tenant_id, self.defaults).await
    }

    /// `getTenantUsage`: what the tenant's live pods hold (effective or reserved, the larger).
    pub async fn get_tenant_usage(&self, tenant_id: &str) -> Result<QuotaUsage, StoreError> {
        let mut conn = self.acquire().await?;
        usage_on(&mut conn, tenant_id).await
    }

    /// `recalculateUsage`: usage recomputed from the rows. Usage is never cached, so this is
    /// the same query as [`Quotas::get_tenant_usage`]; it exists for the seed's API.
    pub async fn recalculate_usage(&self, tenant_id: &str) -> Result<QuotaUsage, StoreError> {
        self.get_tenant_usage(tenant_id).await
    }

    /// `checkTenantQuota`: an advisory answer (nothing is reserved; use [`Quotas::admit`]).
    pub async fn check_tenant_quota(
        &self,
        tenant_id: &str,
        requested: &Requested,
    ) -> Result<QuotaCheck, StoreError> {
        let mut conn = self.acquire().await?;
        let (limits, _) = limits_on(&mut conn, tenant_id, self.defaults).await?;
        let usage = usage_on(&mut conn, tenant_id).await?;
        Ok(check(&limits, &usage, requested))
    }

    /// `getQuotaSummary`: limits, usage and what is left.
    pub async fn get_quota_summary(&self, tenant_id: &str) -> Result<QuotaSummary, StoreError> {
        let mut conn = self.acquire().await?;
        let (limits, source) = limits_on(&mut conn, tenant_id, self.defaults).await?;
        let usage = usage_on(&mut conn, tenant_id).await?;
        Ok(QuotaSummary {
            tenant_id: tenant_id.to_string(),
            source,
            available: available(&limits, &usage),
            limits,
            usage,
        })
    }

    /// Opens an admission: a transaction holding the tenant's lock. Check with
    /// [`Admission::check`], record the reservation on [`Admission::conn`], then
    /// [`Admission::commit`]; dropping it rolls everything back.
    pub async fn begin_admission(&self, tenant_id: &str) -> Result<Admission, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::query("begin a quota admission"))?;
        lock_tenant(&mut tx, tenant_id).await?;
        Ok(Admission {
            tx,
            tenant_id: tenant_id.to_string(),
            defaults: self.defaults,
        })
    }

    /// Upserts a tenant's limits into `cloud_pod_quotas` (idempotent).
    pub async fn set_limits(
        &self,
        tenant_id: &str,
        limits: &QuotaLimits,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cloud_pod_quotas (tenant_id, max_pods, max_cpu_cores, max_memory_mb, max_disk_gb) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id) DO UPDATE SET max_pods = EXCLUDED.max_pods, \
               max_cpu_cores = EXCLUDED.max_cpu_cores, max_memory_mb = EXCLUDED.max_memory_mb, \
               max_disk_gb = EXCLUDED.max_disk_gb",
        )
        .bind(tenant_id)
        .bind(clamp_i32(limits.max_pods))
        .bind(clamp_i32(limits.max_cpu_cores))
        .bind(clamp_i32(limits.max_memory_mb))
        .bind(clamp_i32(limits.max_disk_gb))
        .execute(&self.pool)
        .await
        .map_err(StoreError::query(format!("set the quota of tenant `{tenant_id}`")))?;
        Ok(())
    }

    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(StoreError::query(
            "get a database connection for a quota read",
        ))
    }
}

/// An open admission transaction holding one tenant's lock.
pub struct Admission {
    tx: Transaction<'static, Postgres>,
    tenant_id: String,
    defaults: QuotaLimits,
}

impl Admission {
    /// Checks `requested` against the tenant's limits and usage as seen under the lock.
    pub async fn check(&mut self, requested: &Requested) -> Result<QuotaCheck, StoreError> {
        let (limits, _) = limits_on(&mut self.tx, &self.tenant_id, self.defaults).await?;
        let usage = usage_on(&mut self.tx, &self.tenant_id).await?;
        Ok(check(&limits, &usage, requested))
    }

    /// Checks one more pod on plan `plan_code` against the plan's per-tenant `cap` (none:
    /// no cap), counting the tenant's live pods on the plan under the lock. `details` are
    /// those of the [`Admission::check`] that passed. `Some` is the refusal.
    pub async fn check_plan_cap(
        &mut self,
        plan_code: &str,
        cap: Option<i32>,
        details: &QuotaDetails,
    ) -> Result<Option<QuotaCheck>, StoreError> {
        let Some(cap) = cap else {
            return Ok(None);
        };
        let on_plan = count_live_on_plan(&mut self.tx, &self.tenant_id, plan_code).await?;
        let check = check_plan_cap(plan_code, cap, on_plan, details);
        Ok((!check.allowed).then_some(check))
    }

    /// The transaction, to record the reservation in.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits the reservation and releases the tenant's lock.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx
            .commit()
            .await
            .map_err(StoreError::query("commit a quota admission"))
    }
}

/// Takes the tenant's admission lock for the rest of the transaction. An advisory lock works
/// whether or not the tenant has a `cloud_pod_quotas` row.
async fn lock_tenant(conn: &mut PgConnection, tenant_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('cloudpods-tenant:' || $1, 0))")
        .bind(tenant_id)
        .execute(conn)
        .await
        .map_err(StoreError::query(format!(
            "lock tenant `{tenant_id}` for admission"
        )))?;
    Ok(())
}

async fn limits_on(
    conn: &mut PgConnection,
    tenant_id: &str,
    defaults: QuotaLimits,
) -> Result<(QuotaLimits, QuotaSource), StoreError> {
    let row: Option<(i32, i32, i32, i32)> = sqlx::query_as(
        "SELECT max_pods, max_cpu_cores, max_memory_mb, max_disk_gb \
         FROM cloud_pod_quotas WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(conn)
    .await
    .map_err(StoreError::query(format!(
        "read the quota of tenant `{tenant_id}`"
    )))?;
    Ok(match row {
        Some((p, c, m, d)) => (
            QuotaLimits {
                max_pods: p.into(),
                max_cpu_cores: c.into(),
                max_memory_mb: m.into(),
                max_disk_gb: d.into(),
            },
            QuotaSource::TenantQuota,
        ),
        None => (defaults, QuotaSource::Default),
    })
}

async fn usage_on(conn: &mut PgConnection, tenant_id: &str) -> Result<QuotaUsage, StoreError> {
    let (pods, cpu_cores, memory_mb, disk_gb): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*)::bigint, \
           COALESCE(sum(GREATEST(cpu_cores, COALESCE(reserved_cpu_cores, 0))), 0)::bigint, \
           COALESCE(sum(GREATEST(memory_mb, COALESCE(reserved_memory_mb, 0))), 0)::bigint, \
           COALESCE(sum(GREATEST(disk_gb, COALESCE(reserved_disk_gb, 0))), 0)::bigint \
         FROM cloud_pods WHERE tenant_id = $1 AND deleted_at IS NULL",
    )
    .bind(tenant_id)
    .fetch_one(conn)
    .await
    .map_err(StoreError::query(format!(
        "sum the usage of tenant `{tenant_id}`"
    )))?;
    Ok(QuotaUsage {
        pods,
        cpu_cores,
        memory_mb,
        disk_gb,
    })
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(0, i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(pods: i64, cpu: i64, mem: i64, disk: i64) -> QuotaUsage {
        QuotaUsage {
            pods,
            cpu_cores: cpu,
            memory_mb: mem,
            disk_gb: disk,
        }
    }

    fn req(pods: i64, cpu: i64, mem: i64, disk: i64) -> Requested {
        Requested {
            pods,
            cpu_cores: cpu,
            memory_mb: mem,
            disk_gb: disk,
        }
    }

    #[test]
    fn defaults_are_the_seeds() {
        let d = QuotaLimits::default();
        assert_eq!(
            (d.max_pods, d.max_cpu_cores, d.max_memory_mb, d.max_disk_gb),
            (2, 4, 8192, 200)
        );
    }

    #[test]
    fn fits_exactly_at_the_limit() {
        let c = check(
            &QuotaLimits::default(),
            &usage(1, 2, 4096, 100),
            &req(1, 2, 4096, 100),
        );
        assert!(c.allowed, "{c:?}");
        assert_eq!(c.message, None);
        assert_eq!(c.details.error_field, None);
        assert_eq!(c.details.current_pods, 1);
        assert_eq!(c.details.requested_memory_mb, 4096);
    }

    #[test]
    fn first_exceeded_limit_is_named_in_seed_order() {
        let l = QuotaLimits::default();
        let cases = [
            (
                usage(2, 0, 0, 0),
                req(1, 1, 1, 1),
                "pods",
                "POD_LIMIT_EXCEEDED",
            ),
            (
                usage(0, 4, 0, 0),
                req(1, 1, 1, 1),
                "cpu_cores",
                "CPU_LIMIT_EXCEEDED",
            ),
            (
                usage(0, 0, 8000, 0),
                req(1, 1, 193, 1),
                "memory_mb",
                "MEMORY_LIMIT_EXCEEDED",
            ),
            (
                usage(0, 0, 0, 200),
                req(1, 1, 1, 1),
                "disk_gb",
                "DISK_LIMIT_EXCEEDED",
            ),
            // Everything exceeded: pods wins.
            (
                usage(9, 9, 99999, 999),
                req(1, 1, 1, 1),
                "pods",
                "POD_LIMIT_EXCEEDED",
            ),
        ];
        for (u, r, field, code) in cases {
            let c = check(&l, &u, &r);
            assert!(!c.allowed, "{u:?} + {r:?}");
            assert_eq!(c.details.error_field.as_deref(), Some(field));
            assert_eq!(c.details.error_code.as_deref(), Some(code));
            assert!(
                c.message
                    .as_deref()
                    .unwrap_or("")
                    .contains("Quota exceeded")
            );
        }
    }

    #[test]
    fn a_request_that_does_not_grow_a_resource_passes_even_over_a_lowered_limit() {
        // The admin lowered the limit below current usage; scaling memory down still works.
        let l = QuotaLimits {
            max_pods: 1,
            max_cpu_cores: 1,
            max_memory_mb: 1024,
            max_disk_gb: 10,
        };
        let c = check(&l, &usage(3, 6, 8192, 120), &req(0, 0, -1024, 0));
        assert!(c.allowed, "{c:?}");
        let c = check(&l, &usage(3, 6, 8192, 120), &req(0, 1, 0, 0));
        assert!(!c.allowed);
        assert_eq!(c.details.error_field.as_deref(), Some("cpu_cores"));
    }

    #[test]
    fn zero_limit_refuses_everything_and_overflow_is_safe() {
        let l = QuotaLimits {
            max_pods: 0,
            ..QuotaLimits::default()
        };
        assert!(!check(&l, &usage(0, 0, 0, 0), &req(1, 1, 512, 5)).allowed);
        let c = check(
            &QuotaLimits::default(),
            &usage(i64::MAX, 0, 0, 0),
            &req(1, 0, 0, 0),
        );
        assert!(!c.allowed);
    }

    #[test]
    fn a_plan_cap_refuses_the_pod_past_it_and_keeps_the_details() {
        let passed = check(
            &QuotaLimits::default(),
            &usage(1, 1, 1024, 10),
            &req(1, 1, 1024, 10),
        );
        assert!(passed.allowed);
        let c = check_plan_cap("student", 2, 1, &passed.details);
        assert!(c.allowed, "{c:?}");
        assert_eq!(c.details, passed.details);
        for on_plan in [2, 3] {
            let c = check_plan_cap("student", 2, on_plan, &passed.details);
            assert!(!c.allowed);
            assert_eq!(
                c.message.as_deref(),
                Some("Quota exceeded: plan `student` allows 2 pods per tenant")
            );
            assert_eq!(c.details.error_field.as_deref(), Some("pods"));
            assert_eq!(
                c.details.error_code.as_deref(),
                Some("PLAN_POD_LIMIT_EXCEEDED")
            );
            assert_eq!(c.details.current_pods, 1);
        }
    }

    #[test]
    fn available_is_floored_at_zero() {
        let a = available(&QuotaLimits::default(), &usage(3, 1, 8192, 300));
        assert_eq!(a, usage(0, 3, 0, 0));
    }

    #[test]
    fn details_serialise_with_the_seed_keys() {
        let c = check(
            &QuotaLimits::default(),
            &usage(2, 0, 0, 0),
            &req(1, 1, 1, 1),
        );
        let v = serde_json::to_value(&c).unwrap();
        for key in [
            "max_pods",
            "current_pods",
            "requested_pods",
            "max_cpu_cores",
            "current_cpu_cores",
            "requested_cpu_cores",
            "max_memory_mb",
            "current_memory_mb",
            "requested_memory_mb",
            "max_disk_gb",
            "current_disk_gb",
            "requested_disk_gb",
            "error_field",
            "error_code",
        ] {
            assert!(
                v["details"].get(key).is_some(),
                "details.{key} missing: {v}"
            );
        }
        assert_eq!(v["allowed"], false);
    }
}
