//! The orphan scan: VMs that carry the CloudPods tag but that no live `cloud_pods` row
//! knows. They are reported (metric, one log line each), never destroyed: a human decides.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Ctx;
use crate::metrics::GaugeVec;
use crate::proxmox::{ClusterVm, Proxmox};
use crate::store::reconcile as rstore;

/// VMs in `vms` (with their node) that no live row records on that node.
pub fn orphans<'a>(vms: &'a [ClusterVm], live: &BTreeSet<(i32, String)>) -> Vec<&'a ClusterVm> {
    vms.iter()
        .filter(|vm| vm.is_managed())
        .filter(|vm| {
            let vmid = i32::try_from(vm.vmid.get()).unwrap_or(i32::MAX);
            !live.contains(&(vmid, vm.node.clone()))
        })
        .collect()
}

/// One scan over every node; returns the orphans found per node.
pub(crate) async fn scan_once<P: Proxmox>(ctx: &Ctx<P>) -> BTreeMap<String, Vec<ClusterVm>> {
    let mut found: BTreeMap<String, Vec<ClusterVm>> = BTreeMap::new();
    let live: BTreeSet<(i32, String)> = match rstore::live_vmids(&ctx.pool).await {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "orphan scan: reading cloud_pods failed");
            return found;
        }
    };
    let mut seen = BTreeSet::new();
    for node in &ctx.nodes {
        found.entry(node.to_string()).or_default();
        match ctx.pve.list_managed_vms(node).await {
            Ok(vms) => {
                for vm in orphans(&vms, &live) {
                    if seen.insert((vm.node.clone(), vm.vmid.get())) {
                        found.entry(vm.node.clone()).or_default().push(vm.clone());
                    }
                }
            }
            Err(e) => tracing::warn!(%node, error = %e, "orphan scan: listing VMs failed"),
        }
    }
    found
}

/// Scans every `every`, publishing counts in `gauge` and logging each orphan.
pub(crate) async fn scan_loop<P: Proxmox>(ctx: Arc<Ctx<P>>, gauge: GaugeVec, every: Duration) {
    loop {
        for (node, vms) in scan_once(&ctx).await {
            gauge.set(&[&node], vms.len() as f64);
            for vm in vms {
                tracing::warn!(
                    node = %vm.node,
                    vmid = vm.vmid.get(),
                    tags = ?vm.tags,
                    "orphan VM: it carries the CloudPods marker but no live pod records it; not touching it"
                );
            }
        }
        tokio::time::sleep(every).await;
    }
}
