//! cost-probe: per-request energy and cost for inference servers, from eBPF syscall tracing.
//!
//! Modules follow the data path: `probe` (kernel events) → `spans` (requests) → `energy`
//! (samples) → `attribution` (joules per request) → `pricing` (dollars, CO2) → `output` (sinks).
pub mod alerts;
pub mod attribution;
pub mod cli;
pub mod energy;
pub mod meter;
pub mod output;
pub mod pipeline;
pub mod pricing;
pub mod probe;
pub mod rules;
pub mod spans;
pub mod units;
