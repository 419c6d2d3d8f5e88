//! The module graph of one level, its cycles, and the source lines that prove each edge.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    path::PathBuf,
};

pub(super) struct Evidence {
    pub(super) file: PathBuf,
    pub(super) line: usize,
    pub(super) written: String,
    pub(super) test: bool,
}

#[derive(Default)]
pub(super) struct Graph {
    pub(super) nodes: BTreeSet<String>,
    pub(super) edges: BTreeMap<String, BTreeMap<String, Vec<Evidence>>>,
}

impl Graph {
    pub(super) fn add(&mut self, from: &str, to: &str, evidence: Evidence) {
        self.edges
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default()
            .push(evidence);
    }

    /// The edges the cycle check counts: those used outside test code.
    pub(super) fn live(&self, from: &str) -> impl Iterator<Item = &str> {
        self.edges
            .get(from)
            .into_iter()
            .flatten()
            .filter(|(_, ev)| ev.iter().any(|e| !e.test))
            .map(|(to, _)| to.as_str())
    }

    pub(super) fn write_edges(&self, out: &mut String, prefix: &str, all_nodes: bool) {
        for node in &self.nodes {
            let targets = self.edges.get(node);
            if targets.is_none() && !all_nodes {
                continue;
            }
            let list: Vec<_> = targets
                .into_iter()
                .flatten()
                .map(|(to, ev)| {
                    let to = to.strip_prefix(prefix).unwrap_or(to);
                    if ev.iter().all(|e| e.test) {
                        format!("{to} (test)")
                    } else {
                        to.to_owned()
                    }
                })
                .collect();
            let node = node.strip_prefix(prefix).unwrap_or(node);
            let _ = writeln!(out, "  {node} -> {}", list.join(", "));
        }
    }

    /// Every cycle through a live edge, each once, as `a -> b -> ... -> a` starting from its
    /// least node.
    pub(super) fn cycles(&self) -> BTreeSet<Vec<String>> {
        let mut found = BTreeSet::new();
        for from in self.edges.keys() {
            for to in self.live(from) {
                if let Some(back) = self.shortest(to, from) {
                    let mut cycle: Vec<String> = std::iter::once(from.as_str())
                        .chain(back.iter().copied())
                        .map(str::to_owned)
                        .collect();
                    cycle.pop();
                    let least = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(least);
                    cycle.push(cycle[0].clone());
                    found.insert(cycle);
                }
            }
        }
        found
    }

    /// The shortest path over live edges, both ends included.
    pub(super) fn shortest<'g>(&'g self, from: &'g str, to: &str) -> Option<Vec<&'g str>> {
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            if at == to {
                let mut path = vec![at];
                while let Some(&prev) = came_from.get(path[path.len() - 1]) {
                    path.push(prev);
                }
                path.reverse();
                return Some(path);
            }
            for next in self.live(at) {
                if next != from && !came_from.contains_key(next) {
                    came_from.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// Where `from` uses `to` outside tests: the first place, and how many more.
    pub(super) fn evidence(&self, from: &str, to: &str) -> String {
        let mut places: Vec<_> = self.edges[from][to].iter().filter(|e| !e.test).collect();
        places.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        places.dedup_by(|a, b| (&a.file, a.line) == (&b.file, b.line));
        let first = places[0];
        let more = match places.len() - 1 {
            0 => String::new(),
            n => format!(" (+{n} more)"),
        };
        format!(
            "{}:{} uses {}{more}",
            first.file.display(),
            first.line,
            first.written
        )
    }
}
