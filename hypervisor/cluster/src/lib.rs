//! The clustered-multikernel core of Atoll, as host-testable logic.
//!
//! - [`config`]: the cluster config language (TOML), parsed and validated into
//!   a typed model whose errors name file, line, column, key and a fix.
//! - [`topology`]: the machine as discovered (CPUs, NUMA domains, memory).
//! - [`plan`]: the planner, a pure function from config, topology and memory
//!   map to the per-node plan that the two-part boot carries out.
//! - [`isolation`]: what each node's page tables map, and with which rights.
//! - [`layout`]: how a node arranges its kernel memory (stacks, guard
//!   pages, heap).
//! - [`lock`]: the MCS queue lock that is each node's big kernel lock.
//! - [`doorbell`]: coalescing inter-node signals (the IPI capability's data
//!   path).
//! - [`kick`]: coalescing kicks between the CPUs of a node (at most one
//!   pending per CPU).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod config;
pub mod doorbell;
pub mod isolation;
pub mod kick;
pub mod layout;
pub mod lock;
pub mod plan;
pub mod topology;
