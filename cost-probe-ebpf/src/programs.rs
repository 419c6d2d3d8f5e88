use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use cost_probe_common::{
    ConnEvent, ConnKey, DataEvent, EventHeader, EventKind, HEAD_LEN, MAX_IOV, RING_BYTES, TAIL_LEN,
    TpOffsets, WAKEUP_BYTES,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Tracepoint field offsets, written by userspace before load (from tracefs `format` files).
#[unsafe(no_mangle)]
static OFFSETS: TpOffsets = TpOffsets::SYSCALLS;

/// Traced thread-group ids (the attached pid and its descendants) and, transiently, thread ids
/// from `sched_process_fork` (the tracepoint cannot tell a thread from a process; the exit
/// tracepoint removes them again).
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Accepted TCP connections of the targets → connection id (accept timestamp). LRU so fds
/// closed without `close(2)` (process exit, `close_range`) cannot fill it.
#[map]
static CONNS: LruHashMap<ConnKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Syscall arguments saved at enter, keyed by pid_tgid, consumed at exit.
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records dropped because the ring buffer was full, per CPU; userspace sums and reports them.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

use cost_probe_common::{
    Pending,
    shape::{
        ACCEPT as SHAPE_ACCEPT, BUF as SHAPE_BUF, EMPTY as SHAPE_EMPTY, IOV as SHAPE_IOV,
        MSG as SHAPE_MSG, NONE as SHAPE_NONE,
    },
};

/// Saves a syscall's arguments for its exit, in place when the thread already has an entry.
#[inline(always)]
fn save_pending(pid_tgid: u64, p: &Pending) -> Result<(), u32> {
    match PENDING.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer is to this thread's own entry; only this thread writes it.
        Some(slot) => unsafe { *slot = *p },
        None => PENDING.insert(&pid_tgid, p, 0).map_err(|_| 1u32)?,
    }
    Ok(())
}

/// Takes this thread's saved arguments, leaving the entry marked consumed.
#[inline(always)]
fn take_pending(pid_tgid: u64) -> Option<Pending> {
    let slot = PENDING.get_ptr_mut(&pid_tgid)?;
    // SAFETY: as in save_pending.
    unsafe {
        if (*slot).shape == SHAPE_EMPTY {
            return None;
        }
        let p = *slot;
        (*slot).shape = SHAPE_EMPTY;
        Some(p)
    }
}

#[inline(always)]
fn offsets() -> TpOffsets {
    // SAFETY: OFFSETS is a plain global; volatile so the compiler does not fold the default in.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

/// A `u64` of a `syscalls:*` record at a compile-time offset, as one direct context load (the
/// verifier allows aligned loads at constant offsets of a tracepoint's context; a probe-read
/// helper call per field would cost more than the rest of the filter). Userspace checked at load
/// that this kernel's format files match [`TpOffsets::SYSCALLS`].
#[inline(always)]
fn ctx_u64<const OFF: usize>(ctx: &TracePointContext) -> u64 {
    // SAFETY: OFF is within the record and 8-aligned (checked against the format at load).
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(OFF).cast::<u64>()) }
}

const SYS_NR: usize = TpOffsets::SYSCALLS.enter_nr as usize;
const SYS_ARGS: usize = TpOffsets::SYSCALLS.enter_args as usize;
const SYS_RET: usize = TpOffsets::SYSCALLS.exit_ret as usize;

/// The `i`th syscall argument (`syscalls:sys_enter_*`).
#[inline(always)]
fn arg<const I: usize>(ctx: &TracePointContext) -> u64 {
    const { assert!(I < 3, "only the first three arguments are used") };
    match I {
        0 => ctx_u64::<SYS_ARGS>(ctx),
        1 => ctx_u64::<{ SYS_ARGS + 8 }>(ctx),
        _ => ctx_u64::<{ SYS_ARGS + 16 }>(ctx),
    }
}

/// `__syscall_nr` (`syscalls:sys_enter_*`; an `int` in the low half of its 8-byte slot).
#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> u32 {
    ctx_u64::<SYS_NR>(ctx) as u32
}

/// `ret` (`syscalls:sys_exit_*`).
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> i64 {
    ctx_u64::<SYS_RET>(ctx) as i64
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { TARGETS.get(&tgid) }.is_some()
}

fn count_lost() {
    if let Some(n) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *n += 1 };
    }
}

/// Wake the consumer only when a batch has built up, and only once per batch: the record that
/// crosses the threshold wakes it; the ones after it (while it is waking and draining) do not,
/// since a forced wake-up per record costs more than the record itself. The consumer also polls
/// on a short timer, so a crossing missed by racing CPUs delays records by at most that period.
#[inline(always)]
fn wakeup_flag(size: usize) -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if avail >= WAKEUP_BYTES && avail < WAKEUP_BYTES + size as u64 + 8 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

fn header(pid_tgid: u64, fd: i32, conn_id: u64, kind: EventKind, nr: u32) -> EventHeader {
    EventHeader {
        // SAFETY: helper with no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        conn_id,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        kind: kind as u16,
        syscall: nr as u16,
    }
}

// ---------------------------------------------------------------------------------------------
// Data syscalls. Enter saves the buffer argument when the fd is a traced connection; exit copies
// the head and tail of what was actually transferred (`ret` bytes).
// ---------------------------------------------------------------------------------------------

/// Saves the buffer arguments of a data syscall on a traced connection. No target check first:
/// `CONNS` holds only the targets' connections (userspace removes a process's entries when it
/// exits), so one lookup both filters and finds the connection.
#[inline(always)]
fn enter_io(ctx: &TracePointContext, kind: EventKind, shape: u16) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = arg::<0>(ctx) as i32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    // SAFETY: the value is copied out at once.
    let Some(conn_id) = (unsafe { CONNS.get(&key) }).copied() else {
        return Ok(0);
    };
    let (buf, iovcnt) = match shape {
        SHAPE_NONE => (0, 0),
        _ => (arg::<1>(ctx), arg::<2>(ctx)),
    };
    let pending = Pending {
        conn_id,
        buf,
        iovcnt,
        fd,
        shape,
        kind: kind as u16,
        nr: syscall_nr(ctx),
        pad: 0,
    };
    save_pending(pid_tgid, &pending)?;
    Ok(0)
}

/// Copies `[0, min(len, HEAD_LEN))` of `src` into the head.
#[inline(always)]
fn copy_head(ev: &mut DataEvent, src: u64, len: u64) {
    let n = if len < HEAD_LEN as u64 {
        len as usize
    } else {
        HEAD_LEN
    };
    if n == 0 || n > HEAD_LEN {
        return;
    }
    // SAFETY: reading user memory through the helper, which faults safely.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut ev.head[..n]) }.is_ok() {
        ev.head_len = n as u16;
    }
}

/// Copies the last `min(avail, TAIL_LEN)` bytes ending at `end` into the tail.
#[inline(always)]
fn copy_tail(ev: &mut DataEvent, end: u64, avail: u64) {
    let n = if avail < TAIL_LEN as u64 {
        avail as usize
    } else {
        TAIL_LEN
    };
    if n == 0 || n > TAIL_LEN {
        return;
    }
    // SAFETY: as in copy_head.
    if unsafe { bpf_probe_read_user_buf((end - n as u64) as *const u8, &mut ev.tail[..n]) }.is_ok()
    {
        ev.tail_len = n as u16;
    }
}

#[inline(always)]
fn read_iov(iov: u64, i: usize) -> Option<(u64, u64)> {
    // SAFETY: struct iovec { void *base; size_t len; } is user ABI, read through the helper.
    unsafe { bpf_probe_read_user((iov + 16 * i as u64) as *const [u64; 2]) }
        .ok()
        .map(|v| (v[0], v[1]))
}

/// Head from the first iovec, tail from the iovec that holds the last transferred byte.
#[inline(always)]
fn copy_iov(ev: &mut DataEvent, iov: u64, iovcnt: u64, len: u64) {
    let Some((base0, len0)) = read_iov(iov, 0) else {
        return;
    };
    let first = if len0 < len { len0 } else { len };
    copy_head(ev, base0, first);
    if len <= HEAD_LEN as u64 {
        return;
    }
    let mut before = 0u64; // bytes in iovecs before i
    for i in 0..MAX_IOV {
        if i as u64 >= iovcnt {
            break;
        }
        let Some((base, ilen)) = read_iov(iov, i) else {
            return;
        };
        if before + ilen >= len {
            let end_in = len - before;
            // Never let the tail overlap the head's bytes.
            let avail = if i == 0 {
                end_in - u64::from(ev.head_len)
            } else {
                end_in
            };
            copy_tail(ev, base + end_in, avail);
            return;
        }
        before += ilen;
    }
}

#[inline(always)]
fn exit_io(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(p) = take_pending(pid_tgid) else {
        return Ok(0);
    };
    if p.shape == SHAPE_ACCEPT {
        return Ok(0); // left over from an accept seeded at attach that had already returned
    }
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return Ok(0);
    }
    let len = ret as u64;
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count_lost();
        return Ok(0);
    };
    // SAFETY: the reservation is sized for a DataEvent; every field is written before submit
    // except the payload bytes beyond head_len/tail_len, which userspace never reads.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = header(
        pid_tgid,
        p.fd,
        p.conn_id,
        if p.kind == EventKind::Read as u16 {
            EventKind::Read
        } else {
            EventKind::Write
        },
        p.nr,
    );
    ev.len = len;
    ev.head_len = 0;
    ev.tail_len = 0;
    ev.pad = 0;
    match p.shape {
        SHAPE_BUF => {
            copy_head(ev, p.buf, len);
            if len > HEAD_LEN as u64 {
                copy_tail(ev, p.buf + len, len - HEAD_LEN as u64);
            }
        }
        SHAPE_IOV => copy_iov(ev, p.buf, p.iovcnt, len),
        SHAPE_MSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 (user ABI on 64-bit).
            // SAFETY: user memory through the helper.
            if let Ok(m) = unsafe { bpf_probe_read_user((p.buf + 16) as *const [u64; 2]) } {
                copy_iov(ev, m[0], m[1], len);
            }
        }
        _ => {}
    }
    entry.submit(wakeup_flag(core::mem::size_of::<DataEvent>()));
    Ok(0)
}

macro_rules! enter_prog {
    ($name:ident, $kind:expr, $shape:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match enter_io(&ctx, $kind, $shape) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

// syscalls:sys_enter_read / sys_enter_recvfrom:
//   int __syscall_nr; unsigned int fd; char *buf; size_t count; ...
enter_prog!(enter_read, EventKind::Read, SHAPE_BUF);
// syscalls:sys_enter_readv: unsigned long fd; const struct iovec *vec; unsigned long vlen
enter_prog!(enter_readv, EventKind::Read, SHAPE_IOV);
// syscalls:sys_enter_recvmsg: int fd; struct user_msghdr *msg; unsigned int flags
enter_prog!(enter_recvmsg, EventKind::Read, SHAPE_MSG);
// syscalls:sys_enter_write / sys_enter_sendto: unsigned int fd; const char *buf; size_t count
enter_prog!(enter_write, EventKind::Write, SHAPE_BUF);
// syscalls:sys_enter_writev: unsigned long fd; const struct iovec *vec; unsigned long vlen
enter_prog!(enter_writev, EventKind::Write, SHAPE_IOV);
// syscalls:sys_enter_sendmsg: int fd; struct user_msghdr *msg; unsigned int flags
enter_prog!(enter_sendmsg, EventKind::Write, SHAPE_MSG);
// syscalls:sys_enter_sendfile64: int out_fd; int in_fd; loff_t *offset; size_t count
enter_prog!(enter_sendfile, EventKind::Write, SHAPE_NONE);

/// syscalls:sys_exit_{read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,sendfile64}:
///   int __syscall_nr; long ret
#[tracepoint]
pub fn exit_io_prog(ctx: TracePointContext) -> u32 {
    match exit_io(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------------
// Connections.
// ---------------------------------------------------------------------------------------------

/// syscalls:sys_enter_accept / sys_enter_accept4:
///   int fd; struct sockaddr *upeer_sockaddr; int *upeer_addrlen; (int flags)
#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    match try_enter_accept(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return Ok(0);
    }
    let pending = Pending {
        conn_id: 0,
        buf: arg::<1>(ctx),
        iovcnt: 0,
        fd: arg::<0>(ctx) as i32,
        shape: SHAPE_ACCEPT,
        kind: EventKind::Accept as u16,
        nr: syscall_nr(ctx),
        pad: 0,
    };
    save_pending(pid_tgid, &pending)?;
    Ok(0)
}

/// syscalls:sys_exit_accept / sys_exit_accept4: int __syscall_nr; long ret (the new fd)
#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    match try_exit_accept(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exit_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let p = match take_pending(pid_tgid) {
        Some(p) => p,
        // An accept that was already blocking when we attached (thread-per-connection servers
        // such as cpp-httplib sit in accept(2)): no saved arguments, so the family is unknown
        // and userspace classifies the socket.
        None if is_target((pid_tgid >> 32) as u32) => Pending {
            conn_id: 0,
            buf: 0,
            iovcnt: 0,
            fd: -1,
            shape: SHAPE_ACCEPT,
            kind: EventKind::Accept as u16,
            nr: 0,
            pad: 0,
        },
        None => return Ok(0),
    };
    if p.shape != SHAPE_ACCEPT {
        return Ok(0);
    }
    let ret = syscall_ret(ctx);
    if ret < 0 {
        return Ok(0);
    }
    // The peer address the kernel just wrote to the caller's buffer tells a TCP (inet) accept
    // from a unix-socket one. With no buffer the family is unknown (0) and userspace checks.
    let mut family = 0u16;
    let mut peer_port = 0u16;
    let mut peer_addr = [0u8; 16];
    if p.buf != 0 {
        // SAFETY: user memory through the helper.
        if let Ok(sa) = unsafe { bpf_probe_read_user(p.buf as *const [u8; 24]) } {
            family = u16::from_ne_bytes([sa[0], sa[1]]);
            peer_port = u16::from_be_bytes([sa[2], sa[3]]);
            if family == AF_INET {
                peer_addr[..4].copy_from_slice(&sa[4..8]);
            } else if family == AF_INET6 {
                peer_addr.copy_from_slice(&sa[8..24]);
            }
        }
    }
    if family == AF_UNIX || (family != 0 && family != AF_INET && family != AF_INET6) {
        return Ok(0);
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey {
        tgid,
        fd: ret as u32,
    };
    // SAFETY: helper with no preconditions.
    let conn_id = unsafe { bpf_ktime_get_ns() };
    if CONNS.insert(&key, &conn_id, 0).is_err() {
        warn!(
            ctx,
            "cost-probe: connection table insert failed (tgid {})", tgid
        );
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count_lost();
        return Ok(0);
    };
    entry.write(ConnEvent {
        hdr: header(pid_tgid, ret as i32, conn_id, EventKind::Accept, p.nr),
        family,
        peer_port,
        listen_fd: p.fd,
        peer_addr,
    });
    entry.submit(wakeup_flag(core::mem::size_of::<ConnEvent>()));
    Ok(0)
}

/// syscalls:sys_enter_close: int __syscall_nr; unsigned int fd
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    match try_enter_close(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_close(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // As in enter_io: the connection lookup is the filter.
    let fd = arg::<0>(ctx) as u32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: copied out before removal.
    let Some(conn_id) = (unsafe { CONNS.get(&key) }).copied() else {
        return Ok(0);
    };
    let _ = CONNS.remove(&key);
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count_lost();
        return Ok(0);
    };
    entry.write(header(
        pid_tgid,
        fd as i32,
        conn_id,
        EventKind::Close,
        syscall_nr(ctx),
    ));
    entry.submit(wakeup_flag(core::mem::size_of::<EventHeader>()));
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Processes: the target set follows forks and exits.
// ---------------------------------------------------------------------------------------------

/// sched:sched_process_fork:
///   char parent_comm[16]; pid_t parent_pid; char child_comm[16]; pid_t child_pid
#[tracepoint]
pub fn sched_fork(ctx: TracePointContext) -> u32 {
    match try_sched_fork(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_sched_fork(ctx: &TracePointContext) -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_target(tgid) {
        return Ok(0);
    }
    // SAFETY: offset from the format file.
    let child: i32 = unsafe { ctx.read_at(offsets().fork_child_pid as usize) }.map_err(|_| 1u32)?;
    if TARGETS.insert(&(child as u32), &1, 0).is_err() {
        warn!(
            ctx,
            "cost-probe: target table full, pid {} not traced", child
        );
    }
    Ok(0)
}

/// sched:sched_process_exit: runs in the exiting task; per thread.
#[tracepoint]
pub fn sched_exit(_ctx: TracePointContext) -> u32 {
    match try_sched_exit() {
        Ok(r) | Err(r) => r,
    }
}

fn try_sched_exit() -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The thread's pending-syscall slot lives until the thread does.
    let _ = PENDING.remove(&pid_tgid);
    let tid = pid_tgid as u32;
    if !is_target(tid) {
        return Ok(0);
    }
    let _ = TARGETS.remove(&tid);
    if tid != (pid_tgid >> 32) as u32 {
        return Ok(0); // a thread, not the process
    }
    let Some(mut entry) = EVENTS.reserve::<EventHeader>(0) else {
        count_lost();
        return Ok(0);
    };
    entry.write(header(pid_tgid, -1, 0, EventKind::ProcExit, 0));
    // Process exits are rare and end spans: wake the consumer now.
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    Ok(0)
}
