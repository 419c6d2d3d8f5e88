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

/// What [`Discovery::check`] says of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    Found(Found),
    /// It may match once it listens on a rule's port.
    Wait,
    No,
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
            // A zombie still has its name and cmdline but nothing to trace; tracing it only
            // for `prune` to drop it again made the agent re-attach every scan.
            if self.traced.contains(&pid) || pid == own || !fs.alive(pid) {
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
        // A match under another match is traced with it (its root's descendants are added).
        let pids: HashSet<u32> = found.iter().map(|f| f.pid).collect();
        found.retain(|f| !fs.ancestors(f.pid).any(|a| pids.contains(&a)));
        found
    }

    /// Checks one process (just exec'd) against the rules. `Wait` means a rule's name and
    /// command line match but its port is not listening yet (a server that is starting): ask
    /// again soon.
    pub fn check(&mut self, fs: &ProcFs, rules: &[TargetRule], pid: u32, own: u32) -> Check {
        if self.traced.contains(&pid) || pid == own || !fs.alive(pid) {
            return Check::No;
        }
        if fs.ancestors(pid).any(|a| self.traced.contains(&a)) {
            self.traced.insert(pid);
            return Check::No;
        }
        let listening = listening_inodes(fs, rules);
        if let Some(rule) = rules.iter().find(|t| matches(fs, t, pid, &listening)) {
            return Check::Found(Found {
                pid,
                rule: rule.name.clone(),
                comm: fs.comm(pid),
            });
        }
        // Only a rule that names the process (comm or cmdline) waits for its port: with a
        // port-only rule every exec on the host would wait, and the periodic scan finds it.
        let waiting = rules.iter().any(|t| {
            t.port.is_some()
                && (t.comm.is_some() || t.cmdline.is_some())
                && matches(
                    fs,
                    &TargetRule {
                        port: None,
                        ..t.clone()
                    },
                    pid,
                    &listening,
                )
        });
        if waiting { Check::Wait } else { Check::No }
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
    // Last, as it reads /proc/PID/stat: a kernel thread (`comm = "kworker*"`, say) serves
    // nothing.
    !fs.kernel_thread(pid)
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn write_proc(root: &std::path::Path, pid: u32, parent: u32, comm: &str, cmdline: &str) {
        let d = root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(d.join("cmdline"), cmdline.replace(' ', "\0")).unwrap();
        std::fs::write(
            d.join("stat"),
            format!(
                "{pid} ({comm}) S {parent} {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 \
                 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
    }

    fn rule(name: &str, comm: Option<&str>, cmdline: Option<&str>) -> TargetRule {
        TargetRule {
            name: name.into(),
            comm: comm.map(|c| Regex::new(c).unwrap()),
            cmdline: cmdline.map(|c| Regex::new(c).unwrap()),
            port: None,
        }
    }

    /// Regression (#10.9): the agent re-attached to a zombie on every scan, logging each time.
    #[test]
    fn rules_pick_new_roots_skip_traced_descendants_and_never_a_zombie() {
        let dir = tempfile::tempdir().unwrap();
        write_proc(
            dir.path(),
            10,
            1,
            "python3",
            "python3 -m vllm.entrypoints.api",
        );
        write_proc(dir.path(), 11, 10, "python3", "python3 -m vllm.worker");
        write_proc(dir.path(), 20, 1, "python3", "python3 other.py");
        write_proc(dir.path(), 30, 1, "ollama", "ollama serve");
        write_proc(dir.path(), 40, 1, "ollama", "ollama serve");
        let stat = dir.path().join("40/stat");
        let zombie = std::fs::read_to_string(&stat)
            .unwrap()
            .replace(") S ", ") Z ");
        std::fs::write(&stat, zombie).unwrap();
        let fs = ProcFs::new(dir.path());
        let rules = [
            rule("vllm", Some("^python3$"), Some(r"vllm\.")),
            rule("ollama", Some("^ollama"), None),
        ];
        let mut d = Discovery::default();
        let mut found = d.scan(&fs, &rules, 0);
        found.sort_by_key(|f| f.pid);
        assert_eq!(
            found
                .iter()
                .map(|f| (f.pid, f.rule.as_str()))
                .collect::<Vec<_>>(),
            [(10, "vllm"), (30, "ollama")],
            "a match under another match is traced with it; a zombie (40) is not traced"
        );
        // Tracing 10 (and its child 11) leaves only the ollama server to add.
        let vllm = found.remove(0);
        d.traced(vllm, &[10, 11]);
        let again = d.scan(&fs, &rules, 0);
        assert_eq!(again.iter().map(|f| f.pid).collect::<Vec<_>>(), [30]);
        // Its own pid is never a target.
        assert!(d.scan(&fs, &rules, 30).is_empty());
        // A root that is gone is reported once.
        std::fs::remove_dir_all(dir.path().join("10")).unwrap();
        let gone = d.prune(&fs);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, 10);
        assert_eq!(gone[0].1.rule, "vllm");
        assert!(d.prune(&fs).is_empty());
    }

    /// #10.5: a rule that only names a comm never picks a kernel thread of that name.
    #[test]
    fn rules_never_pick_a_kernel_thread() {
        let dir = tempfile::tempdir().unwrap();
        write_proc(dir.path(), 2, 0, "kthreadd", "");
        write_proc(dir.path(), 50, 2, "kworker/0:1", "");
        write_proc(dir.path(), 60, 1, "kworker", "kworker --serve");
        let fs = ProcFs::new(dir.path());
        let rules = [rule("k", Some("^k"), None)];
        let found = Discovery::default().scan(&fs, &rules, 0);
        assert_eq!(found.iter().map(|f| f.pid).collect::<Vec<_>>(), [60]);
    }

    /// An exec'd process that a rule names but whose port is not listening yet waits (it is
    /// re-checked on every pass); a port-only rule never makes a process wait, or every exec on
    /// the host would.
    #[test]
    fn a_starting_server_waits_only_for_a_rule_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        write_proc(
            dir.path(),
            70,
            1,
            "python3",
            "python3 -m vllm.entrypoints.api",
        );
        write_proc(dir.path(), 71, 1, "bash", "bash -c true");
        let fs = ProcFs::new(dir.path());
        let named = TargetRule {
            port: Some(8000),
            ..rule("vllm", None, Some(r"vllm\."))
        };
        let port_only = TargetRule {
            port: Some(8000),
            ..rule("any", None, None)
        };
        let mut d = Discovery::default();
        assert_eq!(
            d.check(&fs, std::slice::from_ref(&named), 70, 0),
            Check::Wait
        );
        assert_eq!(d.check(&fs, std::slice::from_ref(&named), 71, 0), Check::No);
        assert_eq!(d.check(&fs, &[port_only], 71, 0), Check::No);
        let plain = rule("vllm", None, Some(r"vllm\."));
        assert!(matches!(d.check(&fs, &[plain], 70, 0), Check::Found(f) if f.pid == 70));
    }
}
