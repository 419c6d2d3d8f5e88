//! cost-probe: per-request energy and cost for inference servers, from eBPF syscall tracing.
//!
//! Modules follow the data path: `probe` (kernel events) → `spans` (requests) → `energy`
//! (samples) → `attribution` (joules per request) → `pricing` (dollars, CO2) → `output` (records
//! and sinks). `host` reads /proc, `rules` and `alerts` are what users configure, `runtime` wires
//! one run together, and `cli` turns arguments into a call into it. Each module imports only
//! modules earlier in that flow (`cargo xtask deps` checks it).
pub mod alerts;
pub mod attribution;
pub mod cli;
pub mod energy;
pub mod host;
pub mod output;
pub mod pricing;
pub mod probe;
pub mod report;
pub mod rules;
pub mod runtime;
pub mod spans;
pub mod units;
pub mod view;
