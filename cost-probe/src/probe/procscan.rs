//! What /proc says about the target: its descendants, its listening sockets, and connections it
//! accepted before we attached.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use super::ConnId;

/// `pid` and every live descendant process (thread-group ids), parents first.
#[must_use]
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
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
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".to_owned(), |s| s.trim_end().to_owned())
}

/// The parent of a process, if it is alive.
#[must_use]
pub fn ppid(pid: u32) -> Option<u32> {
    Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.ppid as u32)
}

/// Whether a process is still alive (and not a zombie).
#[must_use]
pub fn alive(pid: u32) -> bool {
    Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.state != 'Z' && s.state != 'X')
}

fn tcp_entries(p: &Process) -> Vec<TcpNetEntry> {
    let mut v = p.tcp().unwrap_or_default();
    v.extend(p.tcp6().unwrap_or_default());
    v
}

/// fd → socket inode for every socket the process holds.
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

/// Reads the process's TCP sockets from `/proc/PID/fd` and `/proc/PID/net/tcp{,6}`.
#[must_use]
pub fn sockets(pid: u32) -> Sockets {
    let Ok(p) = Process::new(pid as i32) else {
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

/// Classifies `fd` of `pid` (for accepts the kernel could not classify).
#[must_use]
pub fn classify(pid: u32, fd: i32) -> FdKind {
    let Ok(p) = Process::new(pid as i32) else {
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
pub fn existing_conns(pid: u32, id: u64) -> Vec<(ConnId, SocketAddr, SocketAddr)> {
    sockets(pid)
        .inbound
        .into_iter()
        .map(|(fd, (local, peer))| (ConnId { tgid: pid, fd, id }, local, peer))
        .collect()
}
