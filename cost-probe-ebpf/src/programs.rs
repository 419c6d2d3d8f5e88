use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use cost_probe_common::{
    BIG_HEAD_LEN, ConnEvent, ConnKey, DataRecord, EventHeader, EventKind, HEAD_LEN, MAX_IOV,
    MID_HEAD_LEN, RING_BYTES, TAIL_LEN, TpOffsets, WAKEUP_BYTES,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Tracepoint field offsets, written by userspace before load (from tracefs `format` files); the
/// `syscalls:*` ones are compiled in and checked by userspace instead (see `ctx_u64`).
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

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records dropped because the ring buffer was full, per CPU; userspace sums and reports them.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

/// The first syscall argument (`syscalls:sys_enter_*`).
#[inline(always)]
fn arg0(ctx: &TracePointContext) -> u64 {
    ctx_u64::<SYS_ARGS>(ctx)
}

/// `__syscall_nr` (`syscalls:sys_enter_*`; an `int` in the low half of its 8-byte slot).
#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> u32 {
    ctx_u64::<SYS_NR>(ctx) as u32
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

/// Emits a whole record: reserved, written and submitted, or counted as lost when the ring is
/// full. `force` wakes the consumer now instead of at the batch threshold. (Data records are
/// filled in place instead: their payload is copied straight into the reservation.)
#[inline(always)]
fn emit<T: 'static>(record: T, force: bool) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_lost();
        return;
    };
    entry.write(record);
    entry.submit(if force {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        wakeup_flag(core::mem::size_of::<T>())
    });
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
// Syscall exits: one program on the `syscalls:sys_exit_*` tracepoint of each traced syscall (data
// syscalls and accepts). The exit record holds only the number and the return value; the
// arguments come from the task's user registers saved at entry (only the return value register
// is replaced by then), so nothing is saved at enter: no per-thread table, no enter program on
// the hot path, and a syscall that was already blocked when we attached is seen like any other.
//
// Per-syscall tracepoints rather than one program on the raw `sys_exit` tracepoint: the other
// syscalls of every process on the host then stop at a bitmap test in the kernel's perf hook
// instead of running a BPF program each (see BENCHMARKS.md, "Host tax").
// ---------------------------------------------------------------------------------------------

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "the sys_exit program reads x86-64 registers and syscall numbers; other architectures are not supported yet"
);

/// x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

/// How a data syscall's buffer argument is laid out.
#[derive(Clone, Copy)]
enum Shape {
    /// `(fd, buf, len)`
    Buf,
    /// `(fd, iov, iovcnt)`
    Iov,
    /// `(fd, struct user_msghdr *, flags)`
    Msg,
    /// `sendfile(out_fd, in_fd, ...)`: no payload to copy.
    None,
}

/// The syscall's arguments, from the registers saved at entry.
struct Args {
    nr: u64,
    a0: u64,
    a1: u64,
    a2: u64,
}

/// `__USER_CS`: the task entered the kernel from 64-bit code. A 32-bit task's syscalls use the
/// ia32 numbering and registers, so the same numbers mean other syscalls there (the kernel
/// already skips compat syscalls for `syscalls:*` events on x86; this keeps the program right
/// whatever fires it).
const USER_CS_64: u64 = 0x33;

/// `ret` (`syscalls:sys_exit_*`: a `long` after `__syscall_nr`).
const SYS_RET: usize = TpOffsets::SYSCALLS.exit_ret as usize;

/// `syscalls:sys_exit_*` of every data syscall and of accept/accept4 (one program, attached to
/// each of those tracepoints by userspace).
#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    // One table: which syscalls are ours, and what each one is. Only the tracepoints of these
    // numbers are attached, so the fall-through arm is for safety, not filtering.
    let nr = u64::from(syscall_nr(&ctx));
    let op = match nr {
        nr::READ | nr::RECVFROM => Some((EventKind::Read, Shape::Buf)),
        nr::WRITE | nr::SENDTO => Some((EventKind::Write, Shape::Buf)),
        nr::READV => Some((EventKind::Read, Shape::Iov)),
        nr::WRITEV => Some((EventKind::Write, Shape::Iov)),
        nr::RECVMSG => Some((EventKind::Read, Shape::Msg)),
        nr::SENDMSG => Some((EventKind::Write, Shape::Msg)),
        nr::SENDFILE => Some((EventKind::Write, Shape::None)),
        nr::ACCEPT | nr::ACCEPT4 => None,
        _ => return 0,
    };
    let ret = ctx_u64::<SYS_RET>(&ctx) as i64;
    // Most calls of these syscalls on the host failed (EAGAIN) or are not ours: the return
    // value decides before the registers are looked at.
    if ret < 0 || (ret == 0 && op.is_some()) {
        return 0;
    }
    // SAFETY: helpers with no preconditions; `bpf_task_pt_regs` of the current task is its user
    // registers saved at entry, a BTF-typed `struct pt_regs *`: the verifier checks each load
    // against vmlinux BTF and turns it into a fault-safe kernel load.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: as above.
    let (cs, a) = unsafe {
        (
            (*regs).cs,
            Args {
                nr,
                a0: (*regs).rdi,
                a1: (*regs).rsi,
                a2: (*regs).rdx,
            },
        )
    };
    if cs != USER_CS_64 {
        return 0;
    }
    let r = match op {
        Some((kind, shape)) => data(&a, ret, kind, shape),
        None => accept(&ctx, &a, ret),
    };
    match r {
        Ok(r) | Err(r) => r,
    }
}

/// Copies `[0, min(len, N))` of `src` into the head.
#[inline(always)]
fn copy_head<const N: usize>(ev: &mut DataRecord<N>, src: u64, len: u64) {
    let n = if len < N as u64 { len as usize } else { N };
    if n == 0 || n > N {
        return;
    }
    // SAFETY: reading user memory through the helper, which faults safely.
    if unsafe { bpf_probe_read_user_buf(src as *const u8, &mut ev.head[..n]) }.is_ok() {
        ev.head_len = n as u16;
    }
}

/// Copies the last `min(avail, TAIL_LEN)` bytes ending at `end` into the tail.
#[inline(always)]
fn copy_tail<const N: usize>(ev: &mut DataRecord<N>, end: u64, avail: u64) {
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
fn copy_iov<const N: usize>(ev: &mut DataRecord<N>, iov: u64, iovcnt: u64, len: u64) {
    let Some((base0, len0)) = read_iov(iov, 0) else {
        return;
    };
    let first = if len0 < len { len0 } else { len };
    copy_head(ev, base0, first);
    if len <= N as u64 {
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

/// A data syscall on a traced connection: the head and tail of what was transferred (`ret`
/// bytes). No target check first: `CONNS` holds only the targets' connections (userspace
/// removes a process's entries when it exits), so one lookup both filters and finds it.
#[inline(always)]
fn data(a: &Args, ret: i64, kind: EventKind, shape: Shape) -> Result<u32, u32> {
    if ret <= 0 {
        return Ok(0);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = a.a0 as i32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    // SAFETY: the value is copied out at once.
    let Some(conn_id) = (unsafe { CONNS.get(&key) }).copied() else {
        return Ok(0);
    };
    let len = ret as u64;
    let hdr = header(pid_tgid, fd, conn_id, kind, a.nr as u32);
    // The smallest record that holds the payload whole; past 16 KiB the small one (head and
    // tail), unless a read starts like a request: then its first 16 KiB, so that no header a
    // real request sends falls into the gap between head and tail.
    if len <= (HEAD_LEN + TAIL_LEN) as u64 {
        fill::<HEAD_LEN>(hdr, a, len, shape);
    } else if len <= MID_HEAD_LEN as u64 {
        fill::<MID_HEAD_LEN>(hdr, a, len, shape);
    } else if len <= BIG_HEAD_LEN as u64
        || (matches!(kind, EventKind::Read) && starts_like_request(a, shape))
    {
        fill::<BIG_HEAD_LEN>(hdr, a, len, shape);
    } else {
        fill::<HEAD_LEN>(hdr, a, len, shape);
    }
    Ok(0)
}

/// Reserves a data record with an `N`-byte head, copies the payload into it and submits it.
#[inline(always)]
fn fill<const N: usize>(hdr: EventHeader, a: &Args, len: u64, shape: Shape) {
    let Some(mut entry) = EVENTS.reserve::<DataRecord<N>>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the reservation is sized for the record; every field is written before submit
    // except the payload bytes beyond head_len/tail_len, which userspace never reads.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = hdr;
    ev.len = len;
    ev.head_len = 0;
    ev.tail_len = 0;
    ev.pad = 0;
    match shape {
        Shape::Buf => {
            copy_head(ev, a.a1, len);
            if len > N as u64 {
                copy_tail(ev, a.a1 + len, len - N as u64);
            }
        }
        Shape::Iov => copy_iov(ev, a.a1, a.a2, len),
        Shape::Msg => {
            if let Some((iov, iovcnt)) = msg_iov(a.a1) {
                copy_iov(ev, iov, iovcnt, len);
            }
        }
        Shape::None => {}
    }
    entry.submit(wakeup_flag(core::mem::size_of::<DataRecord<N>>()));
}

/// `struct user_msghdr`'s `msg_iov` and `msg_iovlen` (at 16 and 24, user ABI on 64-bit).
#[inline(always)]
fn msg_iov(msg: u64) -> Option<(u64, u64)> {
    // SAFETY: user memory through the helper.
    unsafe { bpf_probe_read_user((msg + 16) as *const [u64; 2]) }
        .ok()
        .map(|m| (m[0], m[1]))
}

/// Whether the payload begins like an HTTP/1 request line: an upper-case method token of 3 to 7
/// letters, then a space. Read only for reads larger than the big record's head.
#[inline(always)]
fn starts_like_request(a: &Args, shape: Shape) -> bool {
    let first = match shape {
        Shape::Buf => a.a1,
        Shape::Iov => match read_iov(a.a1, 0) {
            Some((base, _)) => base,
            None => return false,
        },
        Shape::Msg => match msg_iov(a.a1).and_then(|(iov, _)| read_iov(iov, 0)) {
            Some((base, _)) => base,
            None => return false,
        },
        Shape::None => return false,
    };
    // SAFETY: user memory through the helper.
    let Ok(b) = (unsafe { bpf_probe_read_user(first as *const [u8; 8]) }) else {
        return false;
    };
    let mut i = 0;
    while i < 8 && b[i].is_ascii_uppercase() {
        i += 1;
    }
    (3..8).contains(&i) && b[i] == b' '
}

/// accept/accept4 returned a connection: `(listen_fd, struct sockaddr *peer, int *addrlen)`.
#[inline(always)]
fn accept(ctx: &TracePointContext, a: &Args, ret: i64) -> Result<u32, u32> {
    if ret < 0 {
        return Ok(0);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return Ok(0);
    }
    // The peer address the kernel just wrote to the caller's buffer tells a TCP (inet) accept
    // from a unix-socket one. With no buffer the family is unknown (0) and userspace checks.
    let mut family = 0u16;
    let mut peer_port = 0u16;
    let mut peer_addr = [0u8; 16];
    if a.a1 != 0 {
        // SAFETY: user memory through the helper.
        if let Ok(sa) = unsafe { bpf_probe_read_user(a.a1 as *const [u8; 24]) } {
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
    emit(
        ConnEvent {
            hdr: header(
                pid_tgid,
                ret as i32,
                conn_id,
                EventKind::Accept,
                a.nr as u32,
            ),
            family,
            peer_port,
            listen_fd: a.a0 as i32,
            peer_addr,
        },
        false,
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Connections end at close's *enter*: at exit the fd number is already free, and another thread
// may have been handed it by accept in between.
// ---------------------------------------------------------------------------------------------

/// syscalls:sys_enter_close: int __syscall_nr; unsigned int fd
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    match try_enter_close(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_close(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // As in `data`: the connection lookup is the filter.
    let fd = arg0(ctx) as u32;
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    // SAFETY: copied out before removal.
    let Some(conn_id) = (unsafe { CONNS.get(&key) }).copied() else {
        return Ok(0);
    };
    let _ = CONNS.remove(&key);
    emit(
        header(
            pid_tgid,
            fd as i32,
            conn_id,
            EventKind::Close,
            syscall_nr(ctx),
        ),
        false,
    );
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
    let tid = pid_tgid as u32;
    if !is_target(tid) {
        return Ok(0);
    }
    let _ = TARGETS.remove(&tid);
    if tid != (pid_tgid >> 32) as u32 {
        return Ok(0); // a thread, not the process
    }
    // Process exits are rare and end spans: wake the consumer now.
    emit(header(pid_tgid, -1, 0, EventKind::ProcExit, 0), true);
    Ok(0)
}

/// sched:sched_process_exec: any process on the host (attached by the agent only, which looks
/// for new targets): a restarted server is checked against the target rules at once instead of
/// at the next /proc scan.
///   __data_loc char[] filename; pid_t pid; pid_t old_pid
#[tracepoint]
pub fn sched_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Execs are rare and discovery should see them now: wake the consumer.
    emit(header(pid_tgid, -1, 0, EventKind::Exec, 0), true);
    0
}
