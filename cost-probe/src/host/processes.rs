//! What the tracer remembers about each traced process: its name and command line (for tag
//! rules and records), its listening sockets (a request's local address), and the tags it was
//! discovered with (inherited by its descendants).
use std::{
    collections::{BTreeMap, VecDeque, hash_map::Entry},
    net::SocketAddr,
};

// Keyed by kernel ids, not attacker-chosen: a fast non-DoS-resistant hash is fine.
use rustc_hash::FxHashMap as HashMap;

use super::ProcFs;

/// A traced process, as records and tag rules see it.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub comm: String,
    pub cmdline: Option<String>,
    /// Its own tags, or the nearest tagged ancestor's.
    pub tags: BTreeMap<String, String>,
}

/// Per-process caches, read from /proc once per process and dropped a while after it exits.
#[derive(Debug, Default)]
pub struct Processes {
    fs: ProcFs,
    info: HashMap<u32, ProcessInfo>,
    /// Tags given to a process when it became a target (agent discovery).
    tags: HashMap<u32, BTreeMap<String, String>>,
    listeners: HashMap<(u32, i32), Option<SocketAddr>>,
    /// Exited processes, by exit time: their entries go once no held request can need them.
    graveyard: VecDeque<(u64, u32)>,
}

/// How long an exited process's entries are kept: every request of its has been priced and
/// emitted by then (a few intervals).
const GRACE_NS: u64 = 5_000_000_000;

impl Processes {
    #[must_use]
    pub fn new(fs: ProcFs) -> Self {
        Self {
            fs,
            ..Self::default()
        }
    }

    /// Tags for a process and (unless they have their own) its descendants.
    pub fn set_tags(&mut self, pid: u32, tags: BTreeMap<String, String>) {
        self.tags.insert(pid, tags);
        // Cached descendants took the old tags; they are looked up again.
        self.info.clear();
    }

    /// The process's name, command line and tags, read once.
    pub fn info(&mut self, tgid: u32) -> &ProcessInfo {
        let (fs, tags) = (&self.fs, &self.tags);
        self.info.entry(tgid).or_insert_with(|| ProcessInfo {
            comm: fs.comm(tgid),
            cmdline: fs.cmdline(tgid),
            tags: inherited_tags(fs, tags, tgid),
        })
    }

    /// The local address of a listening fd (one /proc read per process fills all of them).
    pub fn listener(&mut self, tgid: u32, fd: i32) -> Option<SocketAddr> {
        if let Entry::Occupied(e) = self.listeners.entry((tgid, fd)) {
            return *e.get();
        }
        for (lfd, addr) in self.fs.sockets(tgid).listeners {
            self.listeners.insert((tgid, lfd), Some(addr));
        }
        *self.listeners.entry((tgid, fd)).or_insert(None)
    }

    pub fn exited(&mut self, ts: u64, tgid: u32) {
        self.graveyard.push_back((ts, tgid));
    }

    /// Drops the entries of processes that exited over [`GRACE_NS`] before `now`, so a
    /// long-running agent does not grow with churn.
    pub fn bury(&mut self, now: u64) {
        while let Some(&(ts, tgid)) = self.graveyard.front() {
            if now.saturating_sub(ts) < GRACE_NS {
                break;
            }
            self.graveyard.pop_front();
            self.info.remove(&tgid);
            self.tags.remove(&tgid);
            self.listeners.retain(|(t, _), _| *t != tgid);
        }
    }
}

/// Tags of a traced process: its own, or those of the nearest ancestor that has some.
fn inherited_tags(
    fs: &ProcFs,
    tags: &HashMap<u32, BTreeMap<String, String>>,
    tgid: u32,
) -> BTreeMap<String, String> {
    if tags.is_empty() {
        return BTreeMap::new();
    }
    std::iter::once(tgid)
        .chain(fs.ancestors(tgid).take(16))
        .find_map(|p| tags.get(&p).cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_inherited_tags_come_from_the_tree_and_are_buried_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, ppid, comm) in [(10u32, 1u32, "srv"), (11, 10, "worker")] {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), format!("{comm}\0-x\0")).unwrap();
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 \
                     0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
                ),
            )
            .unwrap();
        }
        let mut p = Processes::new(ProcFs::new(dir.path()));
        p.set_tags(10, BTreeMap::from([("target".into(), "llm".into())]));
        let w = p.info(11).clone();
        assert_eq!(w.comm, "worker");
        assert_eq!(w.cmdline.as_deref(), Some("worker -x"));
        assert_eq!(w.tags["target"], "llm", "a child inherits its root's tags");
        p.exited(1, 11);
        p.bury(2);
        assert!(p.info.contains_key(&11), "kept during the grace period");
        p.bury(1 + GRACE_NS);
        assert!(!p.info.contains_key(&11));
    }
}
