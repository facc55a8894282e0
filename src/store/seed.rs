//! Idempotent upsert of the plan and blueprint catalog into `cloud_pod_plans` and
//! `cloud_pod_blueprints`.
//!
//! Each entry is upserted by code; a row whose values already equal the catalog's is not
//! touched (so `updated_at` keeps its value). Rows whose code is not in the catalog are left
//! alone: retiring a plan is explicit, by keeping it in the catalog with `isActive: false`
//! (pods may still reference it, and mPanel or billing may have added rows of their own).

use std::fmt;

use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;
use crate::catalog::{Blueprint, Catalog, Plan};

/// What one upsert pass did to one table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpsertCounts {
    /// Rows that did not exist.
    pub inserted: usize,
    /// Rows that existed with different values.
    pub updated: usize,
    /// Rows that already matched the catalog.
    pub unchanged: usize,
}

/// What [`seed_catalog`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// `cloud_pod_plans`.
    pub plans: UpsertCounts,
    /// `cloud_pod_blueprints`.
    pub blueprints: UpsertCounts,
}

impl fmt::Display for UpsertCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inserted, {} updated, {} unchanged",
            self.inserted, self.updated, self.unchanged
        )
    }
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plans: {}; blueprints: {}", self.plans, self.blueprints)
    }
}

/// The outcome of one upsert.
enum Upserted {
    Inserted,
    Updated,
    Unchanged,
}

impl UpsertCounts {
    fn count(&mut self, outcome: Upserted) {
        match outcome {
            Upserted::Inserted => self.inserted += 1,
            Upserted::Updated => self.updated += 1,
            Upserted::Unchanged => self.unchanged += 1,
        }
    }
}

/// Row returned by an upsert that wrote something: `inserted` is false for an update.
fn outcome(row: Option<bool>) -> Upserted {
    match row {
        None => Upserted::Unchanged,
        Some(true) => Upserted::Inserted,
        Some(false) => Upserted::Updated,
    }
}

// `xmax = 0` holds for a freshly inserted row and not for an updated one. The WHERE clause
// skips the update (and its RETURNING row) when nothing differs.
const UPSERT_PLAN: &str = r#"
INSERT INTO cloud_pod_plans AS p
    (code, name, description, price_monthly, vcpu, ram_mb, storage_gb, bandwidth_gb,
     bandwidth_type, is_active, max_pods_per_tenant, billing_product_id, sort_order)
VALUES ($1, $2, $3, ($4::bigint::numeric / 100)::numeric(10, 2), $5, $6, $7, $8,
        $9, $10, $11, $12, $13)
ON CONFLICT (code) DO UPDATE SET
    name = EXCLUDED.name,
    description = EXCLUDED.description,
    price_monthly = EXCLUDED.price_monthly,
    vcpu = EXCLUDED.vcpu,
    ram_mb = EXCLUDED.ram_mb,
    storage_gb = EXCLUDED.storage_gb,
    bandwidth_gb = EXCLUDED.bandwidth_gb,
    bandwidth_type = EXCLUDED.bandwidth_type,
    is_active = EXCLUDED.is_active,
    max_pods_per_tenant = EXCLUDED.max_pods_per_tenant,
    billing_product_id = EXCLUDED.billing_product_id,
    sort_order = EXCLUDED.sort_order
WHERE (p.name, p.description, p.price_monthly, p.vcpu, p.ram_mb, p.storage_gb,
       p.bandwidth_gb, p.bandwidth_type, p.is_active, p.max_pods_per_tenant,
       p.billing_product_id, p.sort_order)
    IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.description, EXCLUDED.price_monthly, EXCLUDED.vcpu,
       EXCLUDED.ram_mb, EXCLUDED.storage_gb, EXCLUDED.bandwidth_gb, EXCLUDED.bandwidth_type,
       EXCLUDED.is_active, EXCLUDED.max_pods_per_tenant, EXCLUDED.billing_product_id,
       EXCLUDED.sort_order)
RETURNING (xmax = 0) AS inserted
"#;

const UPSERT_BLUEPRINT: &str = r#"
INSERT INTO cloud_pod_blueprints AS b
    (code, name, description, proxmox_template_vmid, default_node, storage_pool,
     network_bridge, cloud_init_profile, is_active)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (code) DO UPDATE SET
    name = EXCLUDED.name,
    description = EXCLUDED.description,
    proxmox_template_vmid = EXCLUDED.proxmox_template_vmid,
    default_node = EXCLUDED.default_node,
    storage_pool = EXCLUDED.storage_pool,
    network_bridge = EXCLUDED.network_bridge,
    cloud_init_profile = EXCLUDED.cloud_init_profile,
    is_active = EXCLUDED.is_active
WHERE (b.name, b.description, b.proxmox_template_vmid, b.default_node, b.storage_pool,
       b.network_bridge, b.cloud_init_profile, b.is_active)
    IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.description, EXCLUDED.proxmox_template_vmid,
       EXCLUDED.default_node, EXCLUDED.storage_pool, EXCLUDED.network_bridge,
       EXCLUDED.cloud_init_profile, EXCLUDED.is_active)
RETURNING (xmax = 0) AS inserted
"#;

/// Upserts every plan and blueprint of `catalog` in one transaction; safe to re-run.
pub async fn seed_catalog(pool: &PgPool, catalog: &Catalog) -> Result<SeedReport, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::query("begin the catalog seed transaction"))?;
    let mut report = SeedReport::default();
    for plan in &catalog.plans {
        report.plans.count(upsert_plan(&mut tx, plan).await?);
    }
    for blueprint in &catalog.blueprints {
        report
            .blueprints
            .count(upsert_blueprint(&mut tx, blueprint).await?);
    }
    tx.commit()
        .await
        .map_err(StoreError::query("commit the catalog seed"))?;
    Ok(report)
}

async fn upsert_plan(
    tx: &mut Transaction<'static, Postgres>,
    plan: &Plan,
) -> Result<Upserted, StoreError> {
    let row: Option<bool> = sqlx::query_scalar(UPSERT_PLAN)
        .bind(&plan.code)
        .bind(&plan.name)
        .bind(&plan.description)
        .bind(plan.price_monthly_cents())
        .bind(plan.vcpu)
        .bind(plan.ram_mb)
        .bind(plan.storage_gb)
        .bind(plan.bandwidth_gb)
        .bind(plan.bandwidth_type.as_str())
        .bind(plan.is_active)
        .bind(plan.max_pods_per_tenant)
        .bind(&plan.billing_product_id)
        .bind(plan.sort_order)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query(format!("upsert plan `{}`", plan.code)))?;
    Ok(outcome(row))
}

async fn upsert_blueprint(
    tx: &mut Transaction<'static, Postgres>,
    blueprint: &Blueprint,
) -> Result<Upserted, StoreError> {
    let row: Option<bool> = sqlx::query_scalar(UPSERT_BLUEPRINT)
        .bind(&blueprint.code)
        .bind(&blueprint.name)
        .bind(&blueprint.description)
        .bind(blueprint.proxmox_template_vmid)
        .bind(&blueprint.default_node)
        .bind(&blueprint.storage_pool)
        .bind(&blueprint.network_bridge)
        .bind(Json(&blueprint.cloud_init_profile))
        .bind(blueprint.is_active)
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query(format!(
            "upsert blueprint `{}`",
            blueprint.code
        )))?;
    Ok(outcome(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_display() {
        let report = SeedReport {
            plans: UpsertCounts {
                inserted: 1,
                updated: 2,
                unchanged: 3,
            },
            blueprints: UpsertCounts {
                inserted: 0,
                updated: 0,
                unchanged: 1,
            },
        };
        assert_eq!(
            report.to_string(),
            "plans: 1 inserted, 2 updated, 3 unchanged; blueprints: 0 inserted, 0 updated, 1 unchanged"
        );
    }
}
