//! CloudPods: a Kubernetes operator that runs customer virtual machines on Proxmox VE.

pub mod catalog;
pub mod cli;
pub mod crd;
pub mod crdgen;
pub mod store;
pub mod telemetry;
