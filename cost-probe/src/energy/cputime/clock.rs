//! The target's CPU time per thread group: every thread, live and exited.
//!
//! [`PosixCpuClock`] (the default) reads the kernel's process CPU clock, `CLOCK_PROCESS_CPUTIME`
//! of another process through `clock_getcpuclockid`: `thread_group_cputime`, the sum of every live
//! thread's `sum_exec_runtime` plus what exited threads left in the signal struct, in
//! nanoseconds, one syscall per tgid. [`PidStatClock`] reads the same sum from
//! `/proc/PID/stat`, rounded down to 10 ms clock ticks; it is kept as the reference the
//! benchmark and tests compare against.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use super::{PID_STAT, parse_pid_stat};
use crate::{energy::ReadAt, units::Nanos};

/// CPU time of thread groups, cumulative. A trait so tests can drive exits and clock skew;
/// the sampler always uses [`PosixCpuClock`].
pub trait GroupClock: Send {
    /// Starts following `tgid` and returns its CPU time now.
    ///
    /// # Errors
    /// When no such process can be read (gone, or another PID namespace).
    fn open(&mut self, tgid: u32) -> io::Result<Nanos>;
    /// CPU time of `tgid` now. An error means it exited (and may have been reaped): callers keep
    /// its last reading.
    ///
    /// # Errors
    /// `ESRCH`/`EINVAL` once the process is gone, or any read error.
    fn read(&mut self, tgid: u32) -> io::Result<Nanos>;
    /// Stops following `tgid`.
    fn close(&mut self, tgid: u32);
    /// Resolution and mechanism in words, for the doctor.
    fn describe(&self) -> &'static str;
}

struct Followed {
    tgid: u32,
    clock: libc::clockid_t,
    /// Pins the process: while a signal-0 through it succeeds, the pid has not been reused.
    pidfd: OwnedFd,
}

/// The kernel's process CPU clock, read by pid, with a pidfd to tell a reused pid apart.
#[derive(Default)]
pub struct PosixCpuClock {
    followed: Vec<Followed>,
}

impl PosixCpuClock {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn sample(clock: libc::clockid_t) -> io::Result<Nanos> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only into the timespec we pass.
        if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Nanos(
            u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec).unwrap_or(0),
        ))
    }

    /// Whether the process behind `pidfd` still holds its pid (alive or a zombie not yet reaped).
    /// `EPERM` (we may not signal it) still means it exists.
    fn holds_pid(pidfd: &OwnedFd) -> bool {
        // SAFETY: pidfd_send_signal with signal 0 only checks existence and permission; the
        // fd is owned and open, the info pointer may be null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

impl GroupClock for PosixCpuClock {
    fn open(&mut self, tgid: u32) -> io::Result<Nanos> {
        self.close(tgid);
        let pid =
            libc::pid_t::try_from(tgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned by pidfd_open and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut clock: libc::clockid_t = 0;
        // SAFETY: writes the clock id into `clock`; no other memory is touched.
        let rc = unsafe { libc::clock_getcpuclockid(pid, &raw mut clock) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let now = Self::sample(clock)?;
        self.followed.push(Followed { tgid, clock, pidfd });
        Ok(now)
    }

    fn read(&mut self, tgid: u32) -> io::Result<Nanos> {
        let f = self
            .followed
            .iter()
            .find(|f| f.tgid == tgid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let now = Self::sample(f.clock)?;
        // Checked after the read: if the pid is still ours now, it was ours during the read. A
        // zombie still answers, so the final figure of an exiting process is kept.
        if Self::holds_pid(&f.pidfd) {
            Ok(now)
        } else {
            Err(io::Error::from_raw_os_error(libc::ESRCH))
        }
    }

    fn close(&mut self, tgid: u32) {
        self.followed.retain(|f| f.tgid != tgid);
    }

    fn describe(&self) -> &'static str {
        "target CPU time from the kernel's process CPU clock (ns, all threads live and exited)"
    }
}

/// `utime + stime` of `/proc/PID/stat`, in clock ticks (10 ms with `USER_HZ` 100).
pub struct PidStatClock {
    root: PathBuf,
    ticks_per_sec: u64,
    files: Vec<(u32, File)>,
}

impl PidStatClock {
    #[must_use]
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            root: proc_root.into(),
            ticks_per_sec: procfs::ticks_per_second().max(1),
            files: Vec::new(),
        }
    }

    fn sample(&self, file: &File) -> io::Result<Nanos> {
        let mut buf = [0u8; PID_STAT];
        let ticks = parse_pid_stat(ReadAt::start(file), &mut buf)?;
        Ok(Nanos(
            (u128::from(ticks) * 1_000_000_000 / u128::from(self.ticks_per_sec)) as u64,
        ))
    }
}

impl GroupClock for PidStatClock {
    fn open(&mut self, tgid: u32) -> io::Result<Nanos> {
        self.close(tgid);
        let file = File::open(self.root.join(tgid.to_string()).join("stat"))?;
        let now = self.sample(&file)?;
        self.files.push((tgid, file));
        Ok(now)
    }

    fn read(&mut self, tgid: u32) -> io::Result<Nanos> {
        // A kept-open stat file of a reaped process fails with ESRCH instead of silently showing
        // a reused pid.
        let (_, file) = self
            .files
            .iter()
            .find(|(t, _)| *t == tgid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        self.sample(file)
    }

    fn close(&mut self, tgid: u32) {
        self.files.retain(|(t, _)| *t != tgid);
    }

    fn describe(&self) -> &'static str {
        "target CPU time from /proc/PID/stat (10 ms clock ticks)"
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::{energy::cputime::CpuTimeSource, units::monotonic_now};

    fn process_cpu() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// A forked child that, per command, burns the given nanoseconds of its own CPU time and
    /// reports its CPU clock before and after over a pipe (0 ends it). Only async-signal-safe
    /// calls run in the child: the test harness is multi-threaded.
    struct Burner {
        pid: libc::pid_t,
        cmd: OwnedFd,
        report: OwnedFd,
    }

    impl Burner {
        fn spawn() -> Self {
            let mut cmd = [0i32; 2];
            let mut rep = [0i32; 2];
            // SAFETY: pipe2 writes two fds into each array.
            unsafe {
                assert_eq!(libc::pipe2(cmd.as_mut_ptr(), libc::O_CLOEXEC), 0);
                assert_eq!(libc::pipe2(rep.as_mut_ptr(), libc::O_CLOEXEC), 0);
            }
            // SAFETY: the child only calls read, write, clock_gettime and _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: plain syscalls on fds this process owns; no allocation, no locks.
                unsafe {
                    loop {
                        let mut want = [0u8; 8];
                        if libc::read(cmd[0], want.as_mut_ptr().cast(), 8) != 8 {
                            libc::_exit(1);
                        }
                        let want = u64::from_ne_bytes(want);
                        if want == 0 {
                            libc::_exit(0);
                        }
                        let t0 = process_cpu();
                        while process_cpu() - t0 < want {
                            std::hint::black_box(0u64);
                        }
                        let t1 = process_cpu();
                        let mut out = [0u8; 16];
                        out[..8].copy_from_slice(&t0.to_ne_bytes());
                        out[8..].copy_from_slice(&t1.to_ne_bytes());
                        libc::write(rep[1], out.as_ptr().cast(), 16);
                    }
                }
            }
            // SAFETY: the fds came from pipe2 above; the child's ends are closed here.
            unsafe {
                libc::close(cmd[0]);
                libc::close(rep[1]);
                Self {
                    pid,
                    cmd: OwnedFd::from_raw_fd(cmd[1]),
                    report: OwnedFd::from_raw_fd(rep[0]),
                }
            }
        }

        /// Burns `ns` in the child; returns the CPU time it measured itself.
        fn burn(&self, ns: u64) -> u64 {
            let b = ns.to_ne_bytes();
            let mut out = [0u8; 16];
            // SAFETY: reads and writes of stack buffers on our pipe ends.
            unsafe {
                assert_eq!(libc::write(self.cmd.as_raw_fd(), b.as_ptr().cast(), 8), 8);
                assert_eq!(
                    libc::read(self.report.as_raw_fd(), out.as_mut_ptr().cast(), 16),
                    16
                );
            }
            let t0 = u64::from_ne_bytes(out[..8].try_into().unwrap());
            let t1 = u64::from_ne_bytes(out[8..].try_into().unwrap());
            t1 - t0
        }

        fn end(&self) {
            let b = 0u64.to_ne_bytes();
            // SAFETY: a write of a stack buffer on our pipe end.
            unsafe { libc::write(self.cmd.as_raw_fd(), b.as_ptr().cast(), 8) };
        }

        fn reap(&self) {
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
        }
    }

    /// The defect: a request that burned 5 ms of CPU was priced 0 J because `/proc/PID/stat`
    /// counts 10 ms ticks, so one 100 ms interval saw 0 or 10 ms of it. The process clock must
    /// see the 5 ms to within 1 ms, against the child's own clock.
    #[test]
    fn five_ms_burst_priced_zero_with_tick_resolution() {
        let child = Burner::spawn();
        let mut src = CpuTimeSource::open(Path::new("/proc")).unwrap();
        src.set_targets(&[child.pid as u32]);
        let start = monotonic_now();
        let before = src.sample(start).unwrap();
        let own = child.burn(5_000_000);
        // Close the interval at 100 ms, the sampler's default.
        let left = Duration::from_millis(100).saturating_sub(Duration::from_nanos(
            monotonic_now().saturating_sub(start).0,
        ));
        std::thread::sleep(left);
        let after = src.sample(monotonic_now()).unwrap();
        child.end();
        child.reap();
        let seen = after.target.saturating_sub(before.target).0;
        assert!(
            seen.abs_diff(own) <= 1_000_000,
            "process clock saw {seen} ns, the child measured {own} ns"
        );
        assert_eq!(after.target_alive, 1);
    }

    /// A zombie still answers with its final CPU time; once reaped, the pid answers no more and
    /// the last reading stays.
    #[test]
    fn exited_target_keeps_its_final_burst() {
        let child = Burner::spawn();
        let mut clock = PosixCpuClock::new();
        let base = clock.open(child.pid as u32).unwrap();
        let own = child.burn(3_000_000);
        child.end();
        // Until reaped, the exited child is a zombie: poll until the clock stops moving.
        std::thread::sleep(Duration::from_millis(20));
        let last = clock.read(child.pid as u32).unwrap();
        assert!(last.0 - base.0 >= own, "{last:?} {base:?} {own}");
        child.reap();
        let err = clock.read(child.pid as u32).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)),
            "{err}"
        );
    }

    #[test]
    fn pid_stat_clock_reads_ticks_of_a_live_process() {
        let mut clock = PidStatClock::new("/proc");
        let me = std::process::id();
        let a = clock.open(me).unwrap();
        let b = clock.read(me).unwrap();
        assert!(b >= a);
        // Whole ticks only.
        assert_eq!(b.0 % (1_000_000_000 / procfs::ticks_per_second()), 0);
        clock.close(me);
        assert!(clock.read(me).is_err());
    }
}
