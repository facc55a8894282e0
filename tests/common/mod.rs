//! Shared test helpers.
#![allow(dead_code)]

pub mod api;
pub mod db;
pub mod fixtures;
pub mod kube;
pub mod operator;
pub mod process;
pub mod proxmox;
pub mod ssh;
