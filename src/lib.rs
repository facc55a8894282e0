//! CloudPods: a Kubernetes operator that runs customer virtual machines on Proxmox VE.
#![warn(missing_docs)]

pub mod api;
pub mod backoff;
pub mod bench_api;
pub mod bench_operator;
pub mod bench_ssh;
pub mod catalog;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod dev;
pub mod docgen;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod proxmox;
pub mod queue;
pub mod quota;
pub mod store;
pub mod telemetry;
pub mod worker;
