//! Agent discovery: which processes the `[[target]]` rules pick, and which of them are traced.
//!
//! A scan reads /proc (under the [`ProcFs`] root) and returns the processes a rule matches that
//! are not traced yet and do not descend from a traced one (the kernel follows forks, so those
//! are traced already). The runtime adds each to the probe and reports back with
//! [`Discovery::traced`].
use std::collections::{HashMap, HashSet};

use super::ProcFs;
use crate::rules::schema::TargetRule;

/// A process traced because a target rule matched it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub rule: String,
    pub comm: String,
}

/// A process a rule matched that is not traced yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub rule: String,
    pub comm: String,
}

#[derive(Debug, Default)]
pub struct Discovery {
    roots: HashMap<u32, Root>,
    traced: HashSet<u32>,
}

impl Discovery {
    /// Forgets processes that are gone; returns the roots among them.
    pub fn prune(&mut self, fs: &ProcFs) -> Vec<(u32, Root)> {
        self.traced.retain(|pid| fs.alive(*pid));
        let gone: Vec<u32> = self
            .roots
            .keys()
            .copied()
            .filter(|pid| !fs.alive(*pid))
            .collect();
        gone.into_iter()
            .filter_map(|pid| self.roots.remove(&pid).map(|r| (pid, r)))
            .collect()
    }

    /// A traced process exited (seen in the event stream); returns it if it was a root.
    pub fn exited(&mut self, tgid: u32) -> Option<Root> {
        self.traced.remove(&tgid);
        self.roots.remove(&tgid)
    }

    /// Processes a rule matches that are not traced yet (`own` is never a target).
    pub fn scan(&mut self, fs: &ProcFs, rules: &[TargetRule], own: u32) -> Vec<Found> {
        let listening = listening_inodes(fs, rules);
        let mut found = Vec::new();
        for pid in fs.pids() {
            if self.traced.contains(&pid) || pid == own {
                continue;
            }
            let Some(rule) = rules.iter().find(|t| matches(fs, t, pid, &listening)) else {
                continue;
            };
            if fs.ancestors(pid).any(|a| self.traced.contains(&a)) {
                self.traced.insert(pid);
                continue;
            }
            found.push(Found {
                pid,
                rule: rule.name.clone(),
                comm: fs.comm(pid),
            });
        }
        found
    }

    /// `found` and the processes `added` with it (its descendants) are traced now.
    pub fn traced(&mut self, found: Found, added: &[u32]) {
        self.traced.extend(added.iter().copied());
        self.roots.insert(
            found.pid,
            Root {
                rule: found.rule,
                comm: found.comm,
            },
        );
    }
}

/// Socket inodes listening on each port named by a port rule.
fn listening_inodes(fs: &ProcFs, rules: &[TargetRule]) -> HashMap<u16, HashSet<u64>> {
    let mut out: HashMap<u16, HashSet<u64>> = HashMap::new();
    if rules.iter().all(|r| r.port.is_none()) {
        return out;
    }
    for (port, inode) in fs.listening() {
        if rules.iter().any(|r| r.port == Some(port)) {
            out.entry(port).or_default().insert(inode);
        }
    }
    out
}

fn matches(
    fs: &ProcFs,
    rule: &TargetRule,
    pid: u32,
    listening: &HashMap<u16, HashSet<u64>>,
) -> bool {
    if let Some(re) = &rule.comm
        && !re.is_match(&fs.comm(pid))
    {
        return false;
    }
    if let Some(re) = &rule.cmdline
        && !fs.cmdline(pid).is_some_and(|c| re.is_match(&c))
    {
        return false;
    }
    if let Some(port) = rule.port {
        let Some(inodes) = listening.get(&port) else {
            return false;
        };
        if !fs
            .socket_inodes(pid)
            .iter()
            .any(|(_, inode)| inodes.contains(inode))
        {
            return false;
        }
    }
    true
}
