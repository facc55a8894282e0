//! Builders for test manifests (raw JSON, so tests can also build invalid objects).

#![allow(dead_code)]

use serde_json::{Value, json};

/// A CloudPod manifest under construction.
#[derive(Clone, Debug)]
pub struct PodManifest(pub Value);

impl PodManifest {
    /// A valid minimal CloudPod for `tenant`.
    pub fn new(name: &str, tenant: &str) -> Self {
        PodManifest(json!({
            "apiVersion": "cloudpods.migrahosting.com/v1alpha1",
            "kind": "CloudPod",
            "metadata": { "name": name },
            "spec": { "tenantId": tenant, "planCode": "starter", "blueprint": "ubuntu-24-minimal" }
        }))
    }

    /// Sets `spec.<key>` to a JSON value.
    pub fn spec(mut self, key: &str, value: Value) -> Self {
        self.0["spec"][key] = value;
        self
    }

    /// Sets `spec.resources.<key>`.
    pub fn resource(mut self, key: &str, value: Value) -> Self {
        if self.0["spec"].get("resources").is_none() {
            self.0["spec"]["resources"] = json!({});
        }
        self.0["spec"]["resources"][key] = value;
        self
    }

    /// Removes `spec.<key>`.
    pub fn without(mut self, key: &str) -> Self {
        if let Some(spec) = self.0["spec"].as_object_mut() {
            spec.remove(key);
        }
        self
    }

    /// The manifest as JSON text for kubectl.
    pub fn render(&self) -> String {
        self.0.to_string()
    }
}

/// A TenantQuota manifest.
pub fn tenant_quota(name: &str, max_pods: i64, cores: i64, memory_mb: i64, disk_gb: i64) -> String {
    json!({
        "apiVersion": "cloudpods.migrahosting.com/v1alpha1",
        "kind": "TenantQuota",
        "metadata": { "name": name },
        "spec": { "maxPods": max_pods, "maxCpuCores": cores, "maxMemoryMb": memory_mb, "maxDiskGb": disk_gb }
    })
    .to_string()
}
