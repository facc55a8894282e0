//! Public catalog routes: plans, one plan, the comparison table.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::model::{CompareRow, Comparison, PlanList, PlanView};
use crate::store::pods as store;

/// `GET /plans`: orderable plans in display order.
pub async fn list_plans(State(state): State<AppState>) -> Result<Json<PlanList>, ApiError> {
    let plans = store::active_plans(&state.pool).await?;
    Ok(Json(PlanList {
        plans: plans.iter().map(PlanView::from).collect(),
    }))
}

/// `GET /plans/{code}`: one orderable plan.
pub async fn get_plan(
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    if !super::validate::is_dns_label(&code) {
        return Err(ApiError::invalid(
            "code",
            "must be a plan code (a DNS label)",
        ));
    }
    match store::plan(&state.pool, &code).await? {
        Some(p) if p.is_active => Ok(Json(PlanView::from(&p))),
        _ => Err(ApiError::NotFound(format!("no plan `{code}`"))),
    }
}

/// `GET /compare`: features as rows, plans as columns.
pub async fn compare(State(state): State<AppState>) -> Result<Json<Comparison>, ApiError> {
    let plans: Vec<PlanView> = store::active_plans(&state.pool)
        .await?
        .iter()
        .map(PlanView::from)
        .collect();
    Ok(Json(comparison(plans)))
}

/// The pure comparison table.
pub fn comparison(plans: Vec<PlanView>) -> Comparison {
    let row =
        |key: &str, label: &str, unit: Option<&str>, f: &dyn Fn(&PlanView) -> serde_json::Value| {
            CompareRow {
                key: key.to_string(),
                label: label.to_string(),
                unit: unit.map(str::to_string),
                values: plans.iter().map(f).collect(),
            }
        };
    let rows = vec![
        row("priceMonthly", "Price", Some("per month"), &|p| {
            json!(p.price_monthly)
        }),
        row("vcpu", "vCPU cores", Some("cores"), &|p| json!(p.vcpu)),
        row("ramMb", "Memory", Some("MB"), &|p| json!(p.ram_mb)),
        row("storageGb", "Disk", Some("GB"), &|p| json!(p.storage_gb)),
        row(
            "bandwidth",
            "Monthly transfer",
            Some("GB"),
            &|p| match p.bandwidth_gb {
                Some(gb) if p.bandwidth_type == "metered" => json!(gb),
                _ => json!("unmetered"),
            },
        ),
        row(
            "maxPodsPerTenant",
            "Pods per account",
            None,
            &|p| match p.max_pods_per_tenant {
                Some(n) => json!(n),
                None => json!("account quota"),
            },
        ),
    ];
    Comparison { plans, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(code: &str, vcpu: i32, metered: bool) -> PlanView {
        PlanView {
            code: code.into(),
            name: code.into(),
            description: String::new(),
            price_monthly: 1.5,
            vcpu,
            ram_mb: 1024,
            storage_gb: 20,
            bandwidth_gb: metered.then_some(500),
            bandwidth_type: if metered { "metered" } else { "unmetered" }.into(),
            max_pods_per_tenant: None,
        }
    }

    #[test]
    fn every_row_has_one_value_per_plan() {
        let c = comparison(vec![plan("a", 1, true), plan("b", 2, false)]);
        assert_eq!(c.plans.len(), 2);
        for r in &c.rows {
            assert_eq!(r.values.len(), 2, "{}", r.key);
        }
        let bw = c.rows.iter().find(|r| r.key == "bandwidth").unwrap();
        assert_eq!(bw.values, vec![json!(500), json!("unmetered")]);
        let cpu = c.rows.iter().find(|r| r.key == "vcpu").unwrap();
        assert_eq!(cpu.values, vec![json!(1), json!(2)]);
    }
}
