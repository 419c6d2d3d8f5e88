//! Reading the `EVENTS` ring buffer in batches.
//!
//! aya's `RingBuf::next` publishes the consumer position after every record. The producing CPU
//! reads that position on every reserve and submit, so each publish costs the traced process a
//! cross-CPU cache miss while we drain: on nginx under wrk, `bpf_ringbuf_submit` alone was ~100 ns
//! of the worker's time per record. This reader maps the same pages (the kernel's documented
//! layout: consumer page, producer page, data mapped twice so a record never wraps) and
//! publishes once per [`PUBLISH_BYTES`] and at the end of each drain.
//!
//! Waiting is edge-triggered: the kernel side submits with `BPF_RB_NO_WAKEUP` except for the one
//! record that fills the ring past [`cost_probe_common::WAKEUP_BYTES`], and the consumer drains
//! on a short timer otherwise. A level-triggered `poll` would return as soon as any record is
//! waiting, so the consumer would spin through tiny batches (a syscall and a flush each) and the
//! kernel would pay a wake-up IPI, a VM exit on these machines, far more often.
use std::{
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// `BPF_RINGBUF_BUSY_BIT`: reserved, not yet submitted.
const BUSY: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: submitted as discarded; skip it.
const DISCARD: u32 = 1 << 30;
/// `BPF_RINGBUF_HDR_SZ`.
const HDR: u64 = 8;
/// Free space for the producer at least this often during a long drain.
const PUBLISH_BYTES: u64 = 1 << 20;
/// How much of the next record [`Reader::prefetch`] loads: the small data record whole (the
/// header, a 512-byte head and the 384-byte tail), the start of a larger one.
const PREFETCH_BYTES: usize = 1024;

struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: i32, offset: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh shared mapping of a BPF ring buffer fd; the kernel checks the
        // protection against the offset (only the consumer page may be writable).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                libc::off_t::try_from(offset).map_err(std::io::Error::other)?,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no borrow of it outlives the reader.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// A consumer of one BPF ring buffer map.
pub struct Reader {
    /// Edge-triggered epoll on the ring's fd: ready only when the kernel forced a wake-up.
    epoll: OwnedFd,
    consumer: Mapping,
    /// The producer page followed by the data area, mapped twice.
    producer: Mapping,
    page: usize,
    mask: u64,
}

// SAFETY: the mappings are plain shared memory owned by this value; the atomics in them are
// accessed only through `&mut self` on the consumer side.
unsafe impl Send for Reader {}

impl Reader {
    /// Maps the ring buffer behind `fd`, whose data area is `size` bytes (a power of two).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> std::io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(std::io::Error::other(format!(
                "ring buffer size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(std::io::Error::other)?;
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        // SAFETY: plain syscall; the fd it returns is owned from here on.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: valid fds and event.
        if unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &raw mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            epoll,
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page starts with the kernel's `unsigned long consumer_pos`,
        // page-aligned, and lives as long as `self`.
        unsafe { self.consumer.ptr.cast::<AtomicU64>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as above, for `producer_pos` at the start of the producer page.
        unsafe { self.producer.ptr.cast::<AtomicU64>().as_ref() }
    }

    /// The `len` bytes at ring position `pos` (the double mapping keeps them contiguous).
    fn at(&self, pos: u64, len: usize) -> &[u8] {
        let off = self.page + (pos & self.mask) as usize;
        debug_assert!(off + len <= self.producer.len);
        // SAFETY: `off + len` stays inside the mapping: `pos & mask` < size and a record is
        // never larger than the ring, and the data area is mapped twice.
        unsafe { std::slice::from_raw_parts(self.producer.ptr.cast::<u8>().as_ptr().add(off), len) }
    }

    /// Asks the CPU to load the start of the record at `pos` while the one before it is
    /// handled. The kernel wrote it on the traced process's CPU, so its lines sit in another
    /// core's cache: read cold, the first pass over a record's bytes (the decode, the first scan
    /// of a payload) waited for every line in turn. Only records already submitted (below the
    /// producer position) are touched: a line the producer is still writing would be pulled
    /// back and forth.
    #[inline]
    fn prefetch(&self, pos: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // A pointer, not a slice: the bytes past this record may be the producer's.
            let off = self.page + (pos & self.mask) as usize;
            let start = self.producer.ptr.cast::<u8>().as_ptr().wrapping_add(off);
            // Never past the mapping (a prefetch does not fault, but stays in our pages).
            let len = PREFETCH_BYTES.min(self.producer.len - off);
            for line in (0..len).step_by(64) {
                // SAFETY: SSE is part of the x86-64 baseline, and a prefetch only hints the
                // cache: it reads nothing into the program and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line).cast::<i8>()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pos;
    }

    /// Sleeps until the kernel forces a wake-up (the ring is filling) or `timeout_ms` passes.
    pub fn wait(&self, timeout_ms: i32) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one valid event slot.
        let rc = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &raw mut ev, 1, timeout_ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Hands every submitted record to `f`, in order, and returns how many there were. Stops at
    /// a record still being written (it comes with the next drain), and after about one ring's
    /// worth of data so a producer faster than us cannot keep this call from returning.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let start = self.consumer_pos().load(Ordering::Relaxed);
        let mut cons = start;
        let mut published = cons;
        let mut n = 0;
        'outer: while cons - start <= self.mask {
            let prod = self.producer_pos().load(Ordering::Acquire);
            if cons >= prod {
                break;
            }
            while cons < prod {
                // SAFETY: the header is 8-aligned in the mapping (records are padded to 8
                // bytes and the data area is page-aligned) and written by the kernel with
                // atomic stores.
                #[expect(clippy::cast_ptr_alignment, reason = "ring records are 8-aligned")]
                let len = unsafe { &*(self.at(cons, HDR as usize).as_ptr().cast::<AtomicU32>()) }
                    .load(Ordering::Acquire);
                if len & BUSY != 0 {
                    break 'outer;
                }
                let size = u64::from(len & !(BUSY | DISCARD));
                let next = cons + ((size + HDR + 7) & !7);
                if len & DISCARD == 0 {
                    if next < prod {
                        self.prefetch(next);
                    }
                    f(self.at(cons + HDR, size as usize));
                    n += 1;
                }
                cons = next;
                if cons - published >= PUBLISH_BYTES {
                    self.consumer_pos().store(cons, Ordering::Release);
                    published = cons;
                }
            }
        }
        if cons != published {
            self.consumer_pos().store(cons, Ordering::Release);
        }
        n
    }
}
