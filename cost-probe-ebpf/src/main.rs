//! Kernel side of cost-probe: tracepoints only (these kernels have no kprobes).
//!
//! It stays dumb on purpose: filter by target tgid, remember which fds are accepted TCP
//! connections, pair syscall enter/exit per thread, copy a bounded head and tail of each payload,
//! and emit one fixed-size record per syscall. All protocol logic lives in userspace.
//!
//! Every tracepoint field offset comes from userspace (read from tracefs `format` files) through
//! the `OFFSETS` global; nothing here reads kernel structs.
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
