//! Types shared by the eBPF program and the userspace agent.
//!
//! Every struct is `#[repr(C)]`, made of fixed-width integers only, with explicit padding, and has
//! a compile-time size assertion: the kernel writes these bytes and userspace reads them, so the
//! layout is an ABI.
#![cfg_attr(target_arch = "bpf", no_std)]

/// Bytes copied from the start of each payload into the small data record: request line and
/// headers, status line and framing headers, the start of a JSON body (`"model"`).
pub const HEAD_LEN: usize = 512;
/// Head of the middle data record: payloads of up to 4 KiB are copied whole (most non-streamed
/// LLM responses, requests with production headers: JWTs, cookies, gateway headers).
pub const MID_HEAD_LEN: usize = 4096;
/// Head of the large data record: payloads of up to 16 KiB are copied whole, and a larger read
/// that starts like a request gets its first 16 KiB (every header of a real request).
pub const BIG_HEAD_LEN: usize = 16384;
/// Bytes copied from the end of each payload: the terminal chunk, `data: [DONE]`, and a `usage`
/// object followed by llama.cpp's `timings` object in the last chunk.
pub const TAIL_LEN: usize = 384;
/// iovecs walked to find the end of a vectored write (for its tail).
pub const MAX_IOV: usize = 8;

/// What a ring-buffer record describes. Stored as `u16` in [`EventHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connection was accepted ([`ConnEvent`]).
    Accept = 1,
    /// Bytes received on a traced connection ([`DataEvent`]).
    Read = 2,
    /// Bytes sent on a traced connection ([`DataEvent`]).
    Write = 3,
    /// A traced connection was closed ([`EventHeader`] only).
    Close = 4,
    /// A traced process (thread-group leader) exited ([`EventHeader`] only).
    ProcExit = 5,
    /// Any process on the host executed a new program ([`EventHeader`] only; only while the
    /// agent watches for new targets).
    Exec = 6,
}

impl EventKind {
    #[must_use]
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Accept,
            2 => Self::Read,
            3 => Self::Write,
            4 => Self::Close,
            5 => Self::ProcExit,
            6 => Self::Exec,
            _ => return None,
        })
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) at the syscall's exit.
    pub ts_ns: u64,
    /// Identity of the connection across fd reuse: the accept timestamp, or 0 for process events.
    pub conn_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The connection's fd, or -1 for process events.
    pub fd: i32,
    /// An [`EventKind`].
    pub kind: u16,
    /// The syscall number (`__syscall_nr`) that produced the event, or 0 for process events.
    pub syscall: u16,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);

/// A read or write on a traced connection, with a bounded copy of its head and tail; `N` is the
/// head's capacity, one of three sizes ([`DataEvent`], [`MidDataEvent`], [`BigDataEvent`]).
/// Userspace tells them apart by the record's length.
///
/// The payload covers stream bytes `[0, len)` of this syscall: `head[..head_len]` are bytes
/// `[0, head_len)` and `tail[..tail_len]` are bytes `[len - tail_len, len)`. When `len <= N` the
/// tail is empty; a vectored call's head comes from its first iovec and its tail from the iovec
/// holding its last byte, so either may be shorter than the payload.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataRecord<const N: usize> {
    pub hdr: EventHeader,
    /// Bytes transferred (the syscall's return value).
    pub len: u64,
    pub head_len: u16,
    pub tail_len: u16,
    pub pad: u32,
    pub head: [u8; N],
    pub tail: [u8; TAIL_LEN],
}
/// The data record of payloads that fit `HEAD_LEN + TAIL_LEN` bytes whole, and of larger ones
/// that are neither small enough for a larger record nor the start of a request.
pub type DataEvent = DataRecord<HEAD_LEN>;
pub type MidDataEvent = DataRecord<MID_HEAD_LEN>;
pub type BigDataEvent = DataRecord<BIG_HEAD_LEN>;
/// Bytes of a data record before its head.
pub const DATA_HEADER_LEN: usize = 32 + 16;
const _: () = assert!(core::mem::size_of::<DataEvent>() == DATA_HEADER_LEN + HEAD_LEN + TAIL_LEN);
const _: () =
    assert!(core::mem::size_of::<MidDataEvent>() == DATA_HEADER_LEN + MID_HEAD_LEN + TAIL_LEN);
const _: () =
    assert!(core::mem::size_of::<BigDataEvent>() == DATA_HEADER_LEN + BIG_HEAD_LEN + TAIL_LEN);

/// A TCP connection accepted by a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    /// `AF_INET`, `AF_INET6`, or 0 when the server passed no address buffer to accept.
    pub family: u16,
    /// Peer port, host byte order.
    pub peer_port: u16,
    /// The listening socket's fd.
    pub listen_fd: i32,
    /// Peer address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub peer_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 56);

/// Key of the kernel's connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// Tracepoint field offsets read from tracefs `format` files by userspace. The `syscalls:*`
/// layout is compiled into the kernel side as [`TpOffsets::SYSCALLS`] (direct context loads need
/// constant offsets, and a helper call per argument costs more than the rest of the filter):
/// userspace refuses to load on a kernel whose format files say otherwise. `fork_child_pid` is
/// written into the program's globals before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    /// Offset of the first syscall argument in `syscalls:sys_enter_*` records.
    pub enter_args: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork`.
    pub fork_child_pid: u32,
    /// Offset of `__syscall_nr` in `syscalls:sys_enter_*` and `sys_exit_*` records.
    pub enter_nr: u32,
    /// Offset of `ret` in `syscalls:sys_exit_*` records.
    pub exit_ret: u32,
}
const _: () = assert!(core::mem::size_of::<TpOffsets>() == 16);

impl TpOffsets {
    /// The layout of kernels 4.x–6.x on 64-bit architectures. Its syscall offsets are the ones
    /// the kernel side is compiled with.
    pub const SYSCALLS: Self = Self {
        enter_args: 16,
        fork_child_pid: 44,
        enter_nr: 8,
        exit_ret: 16,
    };
}

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RING_BYTES: u32 = 16 << 20;
/// Submit without waking the consumer until this much data is waiting. The consumer drains on a
/// 10 ms timer, which at ordinary rates empties the ring long before this; the wake-up (an IPI,
/// a VM exit on virtual machines) is only for bursts that would otherwise fill the ring first.
pub const WAKEUP_BYTES: u64 = RING_BYTES as u64 / 4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made of integers and integer arrays, with no padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::TpOffsets {}
}
