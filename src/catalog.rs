//! Plan and blueprint catalog (the seed's `CLOUD_POD_PLANS`): parsed from YAML and validated.
//!
//! The catalog is the source of `cloud_pod_plans` and `cloud_pod_blueprints` rows;
//! `cloudpods migrate` upserts it (see [`crate::store::seed_catalog`]). Validation is pure
//! and reports the first offending entry and field, e.g. `plans[2].vcpu: must be between 1 and 64`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proxmox::types::{self, Vmid};

/// The catalog compiled into the binary.
const BUILTIN_YAML: &str = include_str!("../config/catalog.yaml");

/// Largest vCPU count a plan may offer.
pub const MAX_VCPU: i32 = 64;
/// Smallest and largest RAM a plan may offer, in MB.
pub const RAM_MB_RANGE: (i32, i32) = (256, 1_048_576);
/// Largest disk a plan may offer, in GB.
pub const MAX_STORAGE_GB: i32 = 65_536;
/// Largest monthly transfer a metered plan may offer, in GB.
pub const MAX_BANDWIDTH_GB: i32 = 1_000_000;
/// Largest `maxPodsPerTenant` a plan may set.
pub const MAX_PODS_PER_TENANT: i32 = 1_000;
/// Largest monthly price, in cents (the column is NUMERIC(10,2); this is a sanity bound).
pub const MAX_PRICE_CENTS: i64 = 9_999_999;
/// Smallest and largest Proxmox VMID (the range [`Vmid`] accepts).
pub const VMID_RANGE: (i32, i32) = (Vmid::MIN as i32, Vmid::MAX as i32);

/// Plans and blueprints offered to tenants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Catalog {
    /// Commercial plans (cloud_pod_plans).
    pub plans: Vec<Plan>,
    /// Proxmox templates (cloud_pod_blueprints).
    pub blueprints: Vec<Blueprint>,
}

/// A commercial plan: resources and price.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    /// Primary key used by the API and CloudPod specs, a DNS label (e.g. `starter`).
    pub code: String,
    /// Display name.
    pub name: String,
    /// Display description.
    #[serde(default)]
    pub description: String,
    /// Monthly price with at most two decimals; use [`Plan::price_monthly_cents`] for exact values.
    pub price_monthly: f64,
    /// Virtual CPU cores.
    pub vcpu: i32,
    /// Memory in MB.
    pub ram_mb: i32,
    /// Disk in GB.
    pub storage_gb: i32,
    /// Monthly transfer in GB; required when metered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gb: Option<i32>,
    /// Whether transfer is metered.
    #[serde(default)]
    pub bandwidth_type: BandwidthType,
    /// Whether new pods may be ordered on this plan.
    #[serde(default = "default_true")]
    pub is_active: bool,
    /// Per-tenant cap on pods of this plan, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pods_per_tenant: Option<i32>,
    /// Product id in the billing system, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_product_id: Option<String>,
    /// Position in plan lists (ascending).
    #[serde(default)]
    pub sort_order: i32,
}

/// How a plan's transfer is billed (`cloud_pod_plans.bandwidth_type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BandwidthType {
    /// A monthly transfer allowance of `bandwidthGb`.
    #[default]
    Metered,
    /// No transfer allowance.
    Unmetered,
}

impl BandwidthType {
    /// The database value.
    pub fn as_str(self) -> &'static str {
        match self {
            BandwidthType::Metered => "metered",
            BandwidthType::Unmetered => "unmetered",
        }
    }
}

/// A Proxmox template and where VMs cloned from it are placed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blueprint {
    /// Primary key used by the API and CloudPod specs, a DNS label (e.g. `ubuntu-24-minimal`).
    pub code: String,
    /// Display name.
    pub name: String,
    /// Display description.
    #[serde(default)]
    pub description: String,
    /// VMID of the Proxmox template that is cloned.
    pub proxmox_template_vmid: i32,
    /// Proxmox node new VMs are placed on by default.
    pub default_node: String,
    /// Proxmox storage the VM disks are created on.
    pub storage_pool: String,
    /// Proxmox bridge the VM NIC is attached to (e.g. `vmbr0`).
    pub network_bridge: String,
    /// Cloud-init defaults (e.g. `defaultUser`), stored as a JSON object.
    #[serde(default)]
    pub cloud_init_profile: serde_json::Map<String, serde_json::Value>,
    /// Whether new pods may use this blueprint.
    #[serde(default = "default_true")]
    pub is_active: bool,
}

fn default_true() -> bool {
    true
}

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog file {path}")]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not have the catalog's shape.
    #[error("catalog {origin} is not a valid catalog document")]
    Parse {
        /// Where the catalog came from.
        origin: String,
        /// The YAML error (with line and column).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// An entry breaks a rule.
    #[error("catalog {origin}: {field}: {message}")]
    Invalid {
        /// Where the catalog came from.
        origin: String,
        /// The offending entry and field, e.g. `plans[2].vcpu`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// One rule violation: (field path, message).
type Violation = (String, String);

impl Catalog {
    /// Reads, parses and validates a catalog file.
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// The catalog compiled into the binary (`config/catalog.yaml`).
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::parse(BUILTIN_YAML, "built-in")
    }

    /// Parses and validates catalog YAML; `origin` names the source in errors.
    pub fn parse(yaml: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog =
            serde_saphyr::from_str(yaml).map_err(|source| CatalogError::Parse {
                origin: origin.to_owned(),
                source: Box::new(source),
            })?;
        catalog
            .check()
            .map_err(|(field, message)| CatalogError::Invalid {
                origin: origin.to_owned(),
                field,
                message,
            })?;
        Ok(catalog)
    }

    /// The plan with this code.
    pub fn plan(&self, code: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.code == code)
    }

    /// The blueprint with this code.
    pub fn blueprint(&self, code: &str) -> Option<&Blueprint> {
        self.blueprints.iter().find(|b| b.code == code)
    }

    fn check(&self) -> Result<(), Violation> {
        if self.plans.is_empty() {
            return Err(("plans".into(), "must list at least one plan".into()));
        }
        if self.blueprints.is_empty() {
            return Err((
                "blueprints".into(),
                "must list at least one blueprint".into(),
            ));
        }
        let mut seen = HashMap::new();
        for (i, plan) in self.plans.iter().enumerate() {
            let at = format!("plans[{i}]");
            plan.check(&at)?;
            if let Some(first) = seen.insert(plan.code.as_str(), i) {
                return Err((
                    format!("{at}.code"),
                    format!(
                        "duplicate code {:?}, already used by plans[{first}]",
                        plan.code
                    ),
                ));
            }
        }
        let mut seen = HashMap::new();
        for (i, blueprint) in self.blueprints.iter().enumerate() {
            let at = format!("blueprints[{i}]");
            blueprint.check(&at)?;
            if let Some(first) = seen.insert(blueprint.code.as_str(), i) {
                return Err((
                    format!("{at}.code"),
                    format!(
                        "duplicate code {:?}, already used by blueprints[{first}]",
                        blueprint.code
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Plan {
    /// The monthly price in cents (exact; the catalog allows at most two decimals).
    pub fn price_monthly_cents(&self) -> i64 {
        // Validated to be finite, non-negative, small and with at most two decimals.
        (self.price_monthly * 100.0).round() as i64
    }

    fn check(&self, at: &str) -> Result<(), Violation> {
        let field = |name: &str| format!("{at}.{name}");
        check_dns_label(&self.code).map_err(|m| (field("code"), m))?;
        check_text(&self.name, 1, 100).map_err(|m| (field("name"), m))?;
        check_text(&self.description, 0, 1000).map_err(|m| (field("description"), m))?;
        check_price(self.price_monthly).map_err(|m| (field("priceMonthly"), m))?;
        check_range(self.vcpu, 1, MAX_VCPU).map_err(|m| (field("vcpu"), m))?;
        check_range(self.ram_mb, RAM_MB_RANGE.0, RAM_MB_RANGE.1)
            .map_err(|m| (field("ramMb"), m))?;
        check_range(self.storage_gb, 1, MAX_STORAGE_GB).map_err(|m| (field("storageGb"), m))?;
        match (self.bandwidth_type, self.bandwidth_gb) {
            (BandwidthType::Metered, None) => {
                return Err((
                    field("bandwidthGb"),
                    "is required when bandwidthType is metered".into(),
                ));
            }
            (_, Some(gb)) => {
                check_range(gb, 1, MAX_BANDWIDTH_GB).map_err(|m| (field("bandwidthGb"), m))?
            }
            (BandwidthType::Unmetered, None) => {}
        }
        if let Some(max) = self.max_pods_per_tenant {
            check_range(max, 1, MAX_PODS_PER_TENANT).map_err(|m| (field("maxPodsPerTenant"), m))?;
        }
        if let Some(id) = &self.billing_product_id {
            check_text(id, 1, 128).map_err(|m| (field("billingProductId"), m))?;
        }
        Ok(())
    }
}

impl Blueprint {
    fn check(&self, at: &str) -> Result<(), Violation> {
        let field = |name: &str| format!("{at}.{name}");
        check_dns_label(&self.code).map_err(|m| (field("code"), m))?;
        check_text(&self.name, 1, 100).map_err(|m| (field("name"), m))?;
        check_text(&self.description, 0, 1000).map_err(|m| (field("description"), m))?;
        check_range(self.proxmox_template_vmid, VMID_RANGE.0, VMID_RANGE.1)
            .map_err(|m| (field("proxmoxTemplateVmid"), m))?;
        check_dns_label(&self.default_node).map_err(|m| (field("defaultNode"), m))?;
        check_storage_id(&self.storage_pool).map_err(|m| (field("storagePool"), m))?;
        check_bridge(&self.network_bridge).map_err(|m| (field("networkBridge"), m))?;
        Ok(())
    }
}

fn check_range(value: i32, min: i32, max: i32) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be between {min} and {max}, got {value}"))
    }
}

fn check_text(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if min > 0 && value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if len > max {
        return Err(format!("must be at most {max} characters, got {len}"));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn check_price(value: f64) -> Result<(), String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("must be a non-negative amount, got {value}"));
    }
    let cents = value * 100.0;
    if cents.round() > MAX_PRICE_CENTS as f64 {
        return Err(format!(
            "must be at most {}.{:02}, got {value}",
            MAX_PRICE_CENTS / 100,
            MAX_PRICE_CENTS % 100
        ));
    }
    if (cents - cents.round()).abs() > 1e-6 {
        return Err(format!("must have at most 2 decimals, got {value}"));
    }
    Ok(())
}

// The grammars belong to the Proxmox layer ([`types`]), so a catalog value is checked with the
// rule the driver will apply to it. The canonical tables are stricter than Proxmox in places
// (lowercase, `vmbrN` bridges), and the catalog must satisfy both.

fn check_dns_label(value: &str) -> Result<(), String> {
    if types::is_lower_dns_label(value) {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters), got {value:?}"
        ))
    }
}

fn check_storage_id(value: &str) -> Result<(), String> {
    // `cloud_pod_blueprints.storage_pool` also wants lowercase and at most 63 characters.
    if types::is_storage_id(value)
        && value.len() <= 63
        && !value.bytes().any(|c| c.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(format!(
            "must be a Proxmox storage id (a lowercase letter, then lowercase letters, digits, '-', '_' or '.', ending with a letter or digit, 2 to 63 characters), got {value:?}"
        ))
    }
}

fn check_bridge(value: &str) -> Result<(), String> {
    if types::is_vmbr(value) {
        Ok(())
    } else {
        Err(format!(
            "must be a Proxmox bridge name like vmbr0 (vmbr followed by 1 to 4 digits), got {value:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
plans:
  - code: student
    name: Student
    priceMonthly: 4.99
    vcpu: 1
    ramMb: 1024
    storageGb: 20
    bandwidthGb: 500
  - code: unlimited
    name: Unlimited
    description: No transfer cap.
    priceMonthly: 10
    vcpu: 2
    ramMb: 2048
    storageGb: 40
    bandwidthType: unmetered
    isActive: false
    maxPodsPerTenant: 3
    billingProductId: prod-42
    sortOrder: 7
blueprints:
  - code: ubuntu-24-minimal
    name: Ubuntu 24.04
    proxmoxTemplateVmid: 9000
    defaultNode: pve1
    storagePool: local-lvm
    networkBridge: vmbr0
    cloudInitProfile:
      defaultUser: ubuntu
"#;

    fn invalid(yaml: &str) -> (String, String) {
        match Catalog::parse(yaml, "test") {
            Err(CatalogError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    /// VALID with `from` replaced by `to` (exactly once), then the validation error.
    fn invalid_with(from: &str, to: &str) -> (String, String) {
        assert_eq!(
            VALID.matches(from).count(),
            1,
            "fixture must contain {from:?} once"
        );
        invalid(&VALID.replacen(from, to, 1))
    }

    #[test]
    fn builtin_catalog_is_valid_and_has_the_seed_plans() {
        let c = Catalog::builtin().unwrap();
        let codes: Vec<_> = c.plans.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["student", "starter", "premium", "business"]);
        assert!(c.blueprint("ubuntu-24-minimal").is_some());
        let bp = c.blueprint("ubuntu-24-minimal").unwrap();
        assert_eq!(bp.proxmox_template_vmid, 9000);
        assert_eq!(bp.cloud_init_profile["defaultUser"], "ubuntu");
        // Every plan fits the default tenant quota (seed §4.3: 4 cores, 8192 MB, 200 GB).
        for p in &c.plans {
            assert!(
                p.vcpu <= 4 && p.ram_mb <= 8192 && p.storage_gb <= 200,
                "{}",
                p.code
            );
            assert!(p.is_active);
        }
    }

    #[test]
    fn parses_all_fields_and_defaults() {
        let c = Catalog::parse(VALID, "test").unwrap();
        let s = c.plan("student").unwrap();
        assert_eq!(s.description, "");
        assert_eq!(s.price_monthly_cents(), 499);
        assert_eq!(s.bandwidth_type, BandwidthType::Metered);
        assert_eq!(s.bandwidth_gb, Some(500));
        assert!(s.is_active);
        assert_eq!((s.max_pods_per_tenant, s.sort_order), (None, 0));
        let u = c.plan("unlimited").unwrap();
        assert_eq!(u.price_monthly_cents(), 1000);
        assert_eq!(u.bandwidth_type, BandwidthType::Unmetered);
        assert_eq!(u.bandwidth_gb, None);
        assert!(!u.is_active);
        assert_eq!(u.max_pods_per_tenant, Some(3));
        assert_eq!(u.billing_product_id.as_deref(), Some("prod-42"));
        assert_eq!(u.sort_order, 7);
        assert!(c.plan("nope").is_none());
    }

    #[test]
    fn prices_convert_to_exact_cents() {
        for (price, cents) in [
            (0.0, 0),
            (0.1, 10),
            (4.99, 499),
            (19.99, 1999),
            (99999.99, 9_999_999),
        ] {
            assert!(check_price(price).is_ok(), "{price}");
            let plan = Plan {
                price_monthly: price,
                ..Catalog::parse(VALID, "t").unwrap().plans[0].clone()
            };
            assert_eq!(plan.price_monthly_cents(), cents, "{price}");
        }
    }

    #[test]
    fn malformed_yaml_and_unknown_fields_are_parse_errors() {
        for yaml in [
            "plans: [",
            &VALID.replacen("vcpu: 1", "vcpus: 1", 1),
            &VALID.replacen("bandwidthType: unmetered", "bandwidthType: capped", 1),
            &VALID.replacen("vcpu: 1", "vcpu: one", 1),
            &VALID.replacen("defaultUser: ubuntu", "", 1).replacen(
                "cloudInitProfile:",
                "cloudInitProfile: [a]",
                1,
            ),
        ] {
            match Catalog::parse(yaml, "test") {
                Err(CatalogError::Parse { origin, .. }) => assert_eq!(origin, "test"),
                other => panic!("expected a parse error for {yaml:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.yaml");
        std::fs::write(&path, VALID).unwrap();
        assert_eq!(Catalog::load(&path).unwrap().plans.len(), 2);
        let missing = dir.path().join("missing.yaml");
        let err = Catalog::load(&missing).unwrap_err();
        assert!(matches!(err, CatalogError::Read { .. }));
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }

    #[test]
    fn error_message_names_origin_entry_and_field() {
        let err = Catalog::parse(&VALID.replacen("vcpu: 2", "vcpu: 65", 1), "my.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "catalog my.yaml: plans[1].vcpu: must be between 1 and 64, got 65"
        );
    }

    #[test]
    fn each_plan_rule_is_enforced() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "code: student",
                "code: Student",
                "plans[0].code",
                "DNS label",
            ),
            (
                "code: student",
                "code: -student",
                "plans[0].code",
                "DNS label",
            ),
            (
                "code: student",
                "code: student-",
                "plans[0].code",
                "DNS label",
            ),
            (
                "code: student",
                "code: stu_dent",
                "plans[0].code",
                "DNS label",
            ),
            ("code: student", "code: ''", "plans[0].code", "DNS label"),
            (
                "code: unlimited",
                "code: student",
                "plans[1].code",
                "duplicate code \"student\", already used by plans[0]",
            ),
            (
                "name: Student",
                "name: '  '",
                "plans[0].name",
                "must not be empty",
            ),
            (
                "description: No transfer cap.",
                "description: \"a\\u0007b\"",
                "plans[1].description",
                "control characters",
            ),
            (
                "priceMonthly: 4.99",
                "priceMonthly: -1",
                "plans[0].priceMonthly",
                "non-negative",
            ),
            (
                "priceMonthly: 4.99",
                "priceMonthly: 4.999",
                "plans[0].priceMonthly",
                "at most 2 decimals",
            ),
            (
                "priceMonthly: 4.99",
                "priceMonthly: 100000",
                "plans[0].priceMonthly",
                "at most 99999.99",
            ),
            (
                "vcpu: 1",
                "vcpu: 0",
                "plans[0].vcpu",
                "must be between 1 and 64",
            ),
            (
                "vcpu: 1",
                "vcpu: 65",
                "plans[0].vcpu",
                "must be between 1 and 64",
            ),
            (
                "ramMb: 1024",
                "ramMb: 0",
                "plans[0].ramMb",
                "must be between 256 and 1048576",
            ),
            (
                "ramMb: 1024",
                "ramMb: 2000000",
                "plans[0].ramMb",
                "must be between 256 and 1048576",
            ),
            (
                "storageGb: 20",
                "storageGb: -5",
                "plans[0].storageGb",
                "must be between 1 and 65536",
            ),
            (
                "bandwidthGb: 500",
                "bandwidthGb: 0",
                "plans[0].bandwidthGb",
                "must be between 1 and 1000000",
            ),
            (
                "bandwidthGb: 500",
                "sortOrder: 1",
                "plans[0].bandwidthGb",
                "required when bandwidthType is metered",
            ),
            (
                "maxPodsPerTenant: 3",
                "maxPodsPerTenant: 0",
                "plans[1].maxPodsPerTenant",
                "must be between 1 and 1000",
            ),
            (
                "billingProductId: prod-42",
                "billingProductId: ''",
                "plans[1].billingProductId",
                "must not be empty",
            ),
        ];
        for (from, to, field, message) in cases {
            let (f, m) = invalid_with(from, to);
            assert_eq!(&f, field, "{from} -> {to}: {m}");
            assert!(
                m.contains(message),
                "{from} -> {to}: {m:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn each_blueprint_rule_is_enforced() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "code: ubuntu-24-minimal",
                "code: Ubuntu",
                "blueprints[0].code",
                "DNS label",
            ),
            (
                "name: Ubuntu 24.04",
                "name: ''",
                "blueprints[0].name",
                "must not be empty",
            ),
            (
                "proxmoxTemplateVmid: 9000",
                "proxmoxTemplateVmid: 99",
                "blueprints[0].proxmoxTemplateVmid",
                "between 100 and 999999999",
            ),
            (
                "proxmoxTemplateVmid: 9000",
                "proxmoxTemplateVmid: 1000000000",
                "blueprints[0].proxmoxTemplateVmid",
                "between 100 and 999999999",
            ),
            (
                "defaultNode: pve1",
                "defaultNode: pve_1",
                "blueprints[0].defaultNode",
                "DNS label",
            ),
            (
                "defaultNode: pve1",
                "defaultNode: \"pve1; rm -rf /\"",
                "blueprints[0].defaultNode",
                "DNS label",
            ),
            (
                "storagePool: local-lvm",
                "storagePool: 1local",
                "blueprints[0].storagePool",
                "storage id",
            ),
            (
                "storagePool: local-lvm",
                "storagePool: Local",
                "blueprints[0].storagePool",
                "storage id",
            ),
            (
                "storagePool: local-lvm",
                "storagePool: 'local lvm'",
                "blueprints[0].storagePool",
                "storage id",
            ),
            (
                "networkBridge: vmbr0",
                "networkBridge: eth0",
                "blueprints[0].networkBridge",
                "bridge",
            ),
            (
                "networkBridge: vmbr0",
                "networkBridge: vmbr",
                "blueprints[0].networkBridge",
                "bridge",
            ),
            (
                "networkBridge: vmbr0",
                "networkBridge: vmbr12345",
                "blueprints[0].networkBridge",
                "bridge",
            ),
        ];
        for (from, to, field, message) in cases {
            let (f, m) = invalid_with(from, to);
            assert_eq!(&f, field, "{from} -> {to}: {m}");
            assert!(
                m.contains(message),
                "{from} -> {to}: {m:?} lacks {message:?}"
            );
        }
        let dup = VALID.to_string()
            + "  - code: ubuntu-24-minimal\n    name: Again\n    proxmoxTemplateVmid: 9001\n    defaultNode: pve2\n    storagePool: local\n    networkBridge: vmbr1\n";
        let (f, m) = invalid(&dup);
        assert_eq!(f, "blueprints[1].code");
        assert!(m.contains("already used by blueprints[0]"), "{m}");
    }

    #[test]
    fn empty_lists_are_rejected() {
        assert_eq!(invalid("plans: []\nblueprints: []\n").0, "plans");
        let no_bp = VALID.split("blueprints:").next().unwrap().to_string() + "blueprints: []\n";
        assert_eq!(invalid(&no_bp).0, "blueprints");
    }

    #[test]
    fn grammars() {
        for ok in ["a", "pve1", "a-b", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
        for ok in ["local", "local-lvm", "ceph_pool.1", &"a".repeat(63)] {
            assert!(check_storage_id(ok).is_ok(), "{ok}");
        }
        // "Local" and 64 characters pass Proxmox but not cloud_pod_blueprints.storage_pool.
        for bad in [
            "",
            "1a",
            "-a",
            "a b",
            "a/b",
            "a",
            "local-",
            "Local",
            &"a".repeat(64),
        ] {
            assert!(check_storage_id(bad).is_err(), "{bad}");
        }
        for ok in ["vmbr0", "vmbr9999"] {
            assert!(check_bridge(ok).is_ok(), "{ok}");
        }
        for bad in ["vmbr", "vmbr-1", "vmbr10000", "br0", "vmbr0 ", "vmbr0.100"] {
            assert!(check_bridge(bad).is_err(), "{bad}");
        }
    }
}
