//! What /proc says about the target: its descendants, names, listening sockets, and connections
//! it accepted before we attached. Every read is under one root, so tests use a temporary tree
//! and a daemon set reads the host's /proc mounted elsewhere.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use procfs::{
    FromReadSI as _,
    net::{TcpNetEntries, TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use super::cgroup::{self, ContainerInfo};
use crate::probe::ConnId;

/// A /proc tree: `/proc` on the host the agent runs on, or any directory laid out like it.
#[derive(Clone, Debug)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn process(&self, pid: u32) -> procfs::ProcResult<Process> {
        Process::new_with_root(self.root.join(pid.to_string()))
    }

    /// Every process's pid, as far as it can be read.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        procfs::process::all_processes_with_root(&self.root)
            .map(|all| all.flatten().map(|p| p.pid as u32).collect())
            .unwrap_or_default()
    }

    /// `pid` and every live descendant process (thread-group ids), parents first.
    #[must_use]
    pub fn descendants(&self, pid: u32) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(all) = procfs::process::all_processes_with_root(&self.root) {
            for p in all.flatten() {
                if let Ok(stat) = p.stat() {
                    children
                        .entry(stat.ppid as u32)
                        .or_default()
                        .push(stat.pid as u32);
                }
            }
        }
        let mut out = vec![pid];
        let mut queue = VecDeque::from([pid]);
        let mut seen = HashSet::from([pid]);
        while let Some(p) = queue.pop_front() {
            for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(c) {
                    out.push(c);
                    queue.push_back(c);
                }
            }
        }
        out
    }

    /// The process's short name (`/proc/PID/comm`), or `?` if it is gone.
    #[must_use]
    pub fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(self.root.join(pid.to_string()).join("comm"))
            .map_or_else(|_| "?".to_owned(), |s| s.trim_end().to_owned())
    }

    /// The process's command line, arguments joined by spaces; `None` if it is gone or empty
    /// (kernel threads).
    #[must_use]
    pub fn cmdline(&self, pid: u32) -> Option<String> {
        let args = self.process(pid).and_then(|p| p.cmdline()).ok()?;
        (!args.is_empty()).then(|| args.join(" "))
    }

    /// The parent of a process, if it is alive.
    #[must_use]
    pub fn ppid(&self, pid: u32) -> Option<u32> {
        self.process(pid)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.ppid as u32)
    }

    /// The ancestors of a process, nearest first, up to (not including) init.
    pub fn ancestors(&self, pid: u32) -> impl Iterator<Item = u32> + '_ {
        let mut cur = pid;
        std::iter::from_fn(move || {
            let p = self.ppid(cur).filter(|&p| p > 1 && p != cur)?;
            cur = p;
            Some(p)
        })
        .take(32)
    }

    /// Whether a process is still alive (and not a zombie).
    #[must_use]
    pub fn alive(&self, pid: u32) -> bool {
        self.process(pid)
            .and_then(|p| p.stat())
            .is_ok_and(|s| s.state != 'Z' && s.state != 'X')
    }

    /// The process (thread-group id) a task belongs to, from the `Tgid:` line of
    /// `/proc/PID/status`; equal to `pid` for a process, another pid for one of its threads.
    #[must_use]
    pub fn tgid(&self, pid: u32) -> Option<u32> {
        let status =
            std::fs::read_to_string(self.root.join(pid.to_string()).join("status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Whether `pid` is a kernel thread: `PF_KTHREAD` in the flags of `/proc/PID/stat`, or
    /// kthreadd (pid 2) or one of its children with an empty command line.
    #[must_use]
    pub fn kernel_thread(&self, pid: u32) -> bool {
        /// `PF_KTHREAD` in include/linux/sched.h.
        const PF_KTHREAD: u32 = 0x0020_0000;
        let Ok(stat) = self.process(pid).and_then(|p| p.stat()) else {
            return false;
        };
        if stat.flags & PF_KTHREAD != 0 {
            return true;
        }
        let no_cmdline = std::fs::read(self.root.join(pid.to_string()).join("cmdline"))
            .is_ok_and(|c| c.is_empty());
        no_cmdline && (pid == 2 || stat.ppid == 2)
    }

    /// Pod and container identity from the process's cgroup path.
    #[must_use]
    pub fn container(&self, pid: u32) -> Option<ContainerInfo> {
        cgroup::read(&self.root, pid).ok().flatten()
    }

    /// fd → socket inode for every socket the process holds.
    #[must_use]
    pub fn socket_inodes(&self, pid: u32) -> Vec<(i32, u64)> {
        self.process(pid)
            .map(|p| socket_fds(&p))
            .unwrap_or_default()
    }

    /// The host's TCP sockets (IPv4 and IPv6) in `LISTEN` state, as (local port, socket inode).
    #[must_use]
    pub fn listening(&self) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(entries) =
                TcpNetEntries::from_file(self.root.join(table), procfs::current_system_info())
            else {
                continue;
            };
            out.extend(
                entries
                    .0
                    .into_iter()
                    .filter(|e| e.state == TcpState::Listen)
                    .map(|e| (e.local_address.port(), e.inode)),
            );
        }
        out
    }

    /// Reads the process's TCP sockets from `/proc/PID/fd` and `/proc/PID/net/tcp{,6}`.
    #[must_use]
    pub fn sockets(&self, pid: u32) -> Sockets {
        let Ok(p) = self.process(pid) else {
            return Sockets::default();
        };
        let by_inode: HashMap<u64, TcpNetEntry> =
            tcp_entries(&p).into_iter().map(|e| (e.inode, e)).collect();
        let fds = socket_fds(&p);
        let mut out = Sockets::default();
        let mut listen_ports = HashSet::new();
        for &(fd, inode) in &fds {
            if let Some(e) = by_inode.get(&inode)
                && e.state == TcpState::Listen
            {
                out.listeners.insert(fd, e.local_address);
                listen_ports.insert(e.local_address.port());
            }
        }
        for &(fd, inode) in &fds {
            if let Some(e) = by_inode.get(&inode)
                && e.state == TcpState::Established
                && listen_ports.contains(&e.local_address.port())
            {
                out.inbound.insert(fd, (e.local_address, e.remote_address));
            }
        }
        out
    }

    /// Classifies `fd` of `pid` (for accepts the kernel could not classify).
    #[must_use]
    pub fn classify(&self, pid: u32, fd: i32) -> FdKind {
        let Ok(p) = self.process(pid) else {
            return FdKind::Gone;
        };
        let Some(inode) = p.fd_from_fd(fd).ok().and_then(|f| match f.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        }) else {
            return if p.fd_from_fd(fd).is_ok() {
                FdKind::NotTcp
            } else {
                FdKind::Gone
            };
        };
        tcp_entries(&p)
            .into_iter()
            .find(|e| e.inode == inode)
            .map_or(FdKind::NotTcp, |e| FdKind::Tcp {
                local: e.local_address,
                peer: e.remote_address,
            })
    }

    /// Connections accepted before attach, as kernel table entries.
    #[must_use]
    pub fn existing_conns(&self, pid: u32, id: u64) -> Vec<(ConnId, SocketAddr, SocketAddr)> {
        self.sockets(pid)
            .inbound
            .into_iter()
            .map(|(fd, (local, peer))| (ConnId { tgid: pid, fd, id }, local, peer))
            .collect()
    }
}

fn tcp_entries(p: &Process) -> Vec<TcpNetEntry> {
    let mut v = p.tcp().unwrap_or_default();
    v.extend(p.tcp6().unwrap_or_default());
    v
}

fn socket_fds(p: &Process) -> Vec<(i32, u64)> {
    p.fd()
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| match fd.target {
                    FDTarget::Socket(inode) => Some((fd.fd, inode)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What /proc knows about one process's TCP sockets.
#[derive(Debug, Default)]
pub struct Sockets {
    /// Listening fd → local address.
    pub listeners: HashMap<i32, SocketAddr>,
    /// Established inbound connections (local port is one of our listeners): fd → (local, peer).
    pub inbound: HashMap<i32, (SocketAddr, SocketAddr)>,
}

/// What /proc says about one fd of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A TCP socket, with its local and peer addresses.
    Tcp { local: SocketAddr, peer: SocketAddr },
    /// Some other socket or file (a unix socket, say).
    NotTcp,
    /// The fd (or the process) is gone already.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc tree with the files these readers use, for a few made-up processes.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let proc = |pid: u32, ppid: u32, comm: &str, state: char| {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), format!("/usr/bin/{comm}\0--flag\0")).unwrap();
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 \
                     18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
                ),
            )
            .unwrap();
        };
        proc(100, 1, "server", 'S');
        proc(101, 100, "worker", 'S');
        proc(102, 101, "helper", 'R');
        proc(200, 1, "other", 'Z');
        dir
    }

    /// Writes `/proc/PID/{stat,status,cmdline}` of a task with these flags and thread group.
    fn task(root: &Path, pid: u32, tgid: u32, parent: u32, comm: &str, flags: u32, cmdline: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
        std::fs::write(
            d.join("stat"),
            format!(
                "{pid} ({comm}) S {parent} 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 \
                 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("status"),
            format!(
                "Name:\t{comm}\nState:\tS (sleeping)\nTgid:\t{tgid}\nPid:\t{pid}\nPPid:\t{parent}\n"
            ),
        )
        .unwrap();
    }

    /// Regression (#10.5): `attach --pid` of a non-leader thread was accepted and recorded
    /// nothing, and `--pid 2` traced kthreadd and its kernel threads. What attach checks first.
    #[test]
    fn threads_and_kernel_threads_are_told_from_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        task(
            root,
            100,
            100,
            1,
            "server",
            0x0040_0100,
            "/usr/bin/server --flag",
        );
        task(
            root,
            105,
            100,
            1,
            "server",
            0x0040_0040,
            "/usr/bin/server --flag",
        );
        task(root, 2, 2, 0, "kthreadd", 0x0020_8040, "");
        task(root, 30, 30, 2, "kworker/0:1", 0x0420_8060, "");
        // An old kernel's flags without PF_KTHREAD: a child of kthreadd with no cmdline.
        task(root, 31, 31, 2, "ksoftirqd/0", 0, "");
        let fs = ProcFs::new(root);
        assert_eq!(fs.tgid(100), Some(100));
        assert_eq!(fs.tgid(105), Some(100), "a thread's tgid is its process");
        assert_eq!(fs.tgid(999), None);
        assert!(!fs.kernel_thread(100));
        assert!(!fs.kernel_thread(105));
        assert!(fs.kernel_thread(2));
        assert!(fs.kernel_thread(30));
        assert!(fs.kernel_thread(31));
        assert!(!fs.kernel_thread(999));
    }

    #[test]
    fn descendants_names_and_liveness_come_from_the_given_root() {
        let dir = tree();
        let fs = ProcFs::new(dir.path());
        assert_eq!(fs.descendants(100), [100, 101, 102]);
        assert_eq!(fs.comm(101), "worker");
        assert_eq!(fs.comm(999), "?");
        assert_eq!(fs.cmdline(100).as_deref(), Some("/usr/bin/server --flag"));
        assert_eq!(fs.ppid(102), Some(101));
        assert_eq!(fs.ancestors(102).collect::<Vec<_>>(), [101, 100]);
        assert!(fs.alive(100));
        assert!(!fs.alive(200), "a zombie is not alive");
        assert!(!fs.alive(999));
        let mut pids = fs.pids();
        pids.sort_unstable();
        assert_eq!(pids, [100, 101, 102, 200]);
    }
}
