//! Kernel side of cost-probe: tracepoints only (these kernels have no kprobes, and fentry is
//! refused): one program on the `syscalls:sys_exit_*` tracepoint of each data syscall and accept
//! (arguments from the task's saved registers), `syscalls:sys_enter_close`, `sched:sched_process_{fork,exit}`, and for the agent
//! `sched:sched_process_exec`.
//!
//! It stays dumb on purpose: filter by syscall number and connection, remember which fds are
//! accepted TCP connections of the targets, copy a bounded head and tail of each payload from
//! the arguments saved in the task's registers, and emit one fixed-size record per syscall. All
//! protocol logic lives in userspace.
//!
//! `sched_process_fork`'s field offset comes from userspace (tracefs `format` files) through the
//! `OFFSETS` global; the `syscalls:*` layout is compiled in and checked by userspace at load.
//! x86-64 only: the `sys_exit` program reads x86-64 registers and syscall numbers.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// On the host this crate only has to type-check (clippy --workspace); the programs run in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
