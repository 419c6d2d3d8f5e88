//! The host around the target, as /proc shows it: processes, their sockets and cgroups, and
//! discovery of targets by rules. Everything is read under one [`ProcFs`] root.
pub mod cgroup;
pub mod discovery;
mod proc;
mod processes;

pub use self::{
    proc::{FdKind, ProcFs, Sockets},
    processes::{ProcessInfo, Processes},
};
