//! `cargo xtask deps`: no module of `cost-probe` uses a module that uses it back.
//!
//! Two levels are checked: the crate's top-level modules, and within each of those its direct
//! children. At the child level the parent is no node: a child naming `super::Item` while the
//! parent declares and re-exports the child is how Rust modules are built, not a cycle. Uses
//! from `#[cfg(test)]` code are listed but not checked: a test may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::bail;
use syn::visit::Visit as _;

mod collect;
mod graph;

use collect::{Collector, cfg_test};
use graph::{Evidence, Graph};

pub const SRC: &str = "cost-probe/src";

pub fn run(src: &Path) -> anyhow::Result<()> {
    let krate = Crate::load(|file| fs::read_to_string(src.join(file)).ok());
    let (report, cycles) = krate.report();
    print!("{report}");
    let reached: BTreeSet<_> = krate.modules.values().map(|m| &m.file).collect();
    let mut files = rust_files(src, Path::new(""))?;
    files.sort();
    let orphans: Vec<_> = files
        .into_iter()
        .filter(|f| !reached.contains(f) && f != Path::new("main.rs"))
        .map(|f| f.display().to_string())
        .collect();
    if !orphans.is_empty() {
        // Not compiled, so not checked; during a move that is usually a forgotten `mod`.
        println!("not in lib.rs's module tree: {}", orphans.join(", "));
    }
    for problem in &krate.problems {
        println!("cannot check: {problem}");
    }
    if cycles > 0 || !krate.problems.is_empty() {
        bail!(
            "{cycles} module cycle(s), {} unreadable module(s) in {}",
            krate.problems.len(),
            src.display()
        );
    }
    Ok(())
}

fn rust_files(root: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(root.join(dir))? {
        let entry = entry?;
        let rel = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            files.extend(rust_files(root, &rel)?);
        } else if rel.extension().is_some_and(|e| e == "rs") {
            files.push(rel);
        }
    }
    Ok(files)
}

type ModPath = Vec<String>;

/// A path written in the source that may lead into the crate.
struct Ref {
    module: ModPath,
    written: Vec<String>,
    file: PathBuf,
    line: usize,
    test: bool,
}

#[derive(Default)]
struct Module {
    /// What its module-level `use` items name, as written: a path through a re-export
    /// (`super::Ledger` for `pub use ledger::Ledger`) is followed to the module that defines it.
    imports: BTreeMap<String, Vec<String>>,
    file: PathBuf,
    /// Compiled only for tests: no node of the graph, as its uses are never checked.
    test: bool,
}

#[derive(Default)]
struct Crate {
    modules: BTreeMap<ModPath, Module>,
    refs: Vec<Ref>,
    /// Modules without a file or that do not parse: the rest is still drawn, so a tree in the
    /// middle of a move still gets its list.
    problems: Vec<String>,
}

/// A `mod name;` waiting for its file: the first of `candidates` that exists.
struct Pending {
    candidates: Vec<(PathBuf, bool)>,
    module: ModPath,
    test: bool,
    declared: String,
}

impl Crate {
    /// Walks the module tree from lib.rs, reading files (relative to the source directory) with
    /// `read`, which answers `None` for a file that does not exist.
    fn load(read: impl Fn(&Path) -> Option<String>) -> Self {
        let mut krate = Crate::default();
        let mut queue = VecDeque::from([Pending {
            candidates: vec![("lib.rs".into(), true)],
            module: Vec::new(),
            test: false,
            declared: "crate root".into(),
        }]);
        while let Some(pending) = queue.pop_front() {
            let Some((file, mod_rs, source)) = pending
                .candidates
                .iter()
                .find_map(|(file, mod_rs)| read(file).map(|source| (file, *mod_rs, source)))
            else {
                let tried: Vec<_> = pending
                    .candidates
                    .iter()
                    .map(|(f, _)| f.display().to_string())
                    .collect();
                krate.problems.push(format!(
                    "{}: no file for the module: {}",
                    pending.declared,
                    tried.join(" or ")
                ));
                krate.add_module(pending.module, &pending.candidates[0].0, pending.test);
                continue;
            };
            let ast = match syn::parse_file(&source) {
                Ok(ast) => ast,
                Err(e) => {
                    let line = e.span().start().line;
                    krate
                        .problems
                        .push(format!("{}:{line}: {e}", file.display()));
                    krate.add_module(pending.module, file, pending.test);
                    continue;
                }
            };
            let file_dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
            let child_dir = if mod_rs {
                file_dir.clone()
            } else {
                file_dir.join(file.file_stem().unwrap_or_default())
            };
            let test = pending.test || cfg_test(&ast.attrs);
            krate.add_module(pending.module.clone(), file, test);
            let mut collector = Collector {
                krate: &mut krate,
                queue: &mut queue,
                file,
                file_dir,
                child_dir,
                inline: false,
                module: pending.module,
                test,
                blocks: 0,
            };
            collector.visit_file(&ast);
        }
        krate
    }

    fn add_module(&mut self, path: ModPath, file: &Path, test: bool) {
        let module = Module {
            imports: BTreeMap::new(),
            file: file.to_path_buf(),
            test,
        };
        self.modules.insert(path, module);
    }

    /// The absolute path (without `crate`) that `written`, in `module`, names; `None` for a path
    /// that does not lead into the crate (another crate, a local, a generic).
    fn resolve(&self, module: &[String], written: &[String], depth: usize) -> Option<Vec<String>> {
        let first = written.first()?;
        let (base, rest) = match first.as_str() {
            "crate" => (Vec::new(), &written[1..]),
            "self" | "super" => {
                let mut base = module.to_vec();
                let mut rest = if first == "self" {
                    &written[1..]
                } else {
                    written
                };
                while let Some((seg, tail)) = rest.split_first()
                    && seg == "super"
                {
                    base.pop()?;
                    rest = tail;
                }
                (base, rest)
            }
            _ => {
                let mut child = module.to_vec();
                child.push(first.clone());
                let imported = self.modules.get(module)?.imports.contains_key(first);
                if !imported && !self.modules.contains_key(&child) {
                    return None;
                }
                (module.to_vec(), written)
            }
        };
        Some(self.follow(base, rest, depth))
    }

    fn follow(&self, mut at: Vec<String>, rest: &[String], depth: usize) -> Vec<String> {
        for (i, seg) in rest.iter().enumerate() {
            at.push(seg.clone());
            if self.modules.contains_key(&at) {
                continue;
            }
            at.pop();
            // The depth bound stops `use a::b` inside `b`-named chains from looping.
            if depth < 8
                && let Some(target) = self.modules.get(&at).and_then(|m| m.imports.get(seg))
                && let Some(path) = self.resolve(
                    &at,
                    &[target.as_slice(), &rest[i + 1..]].concat(),
                    depth + 1,
                )
            {
                return path;
            }
            at.extend_from_slice(&rest[i..]);
            return at;
        }
        at
    }

    /// The module that defines what `path` names.
    fn owner<'p>(&self, path: &'p [String]) -> &'p [String] {
        (0..=path.len())
            .rev()
            .map(|n| &path[..n])
            .find(|p| self.modules.contains_key(*p))
            .unwrap_or_default()
    }

    /// The top-level graph, and for each top-level module the graph of its children.
    fn graphs(&self) -> (Graph, BTreeMap<&str, Graph>) {
        let mut top = Graph::default();
        let mut inner: BTreeMap<&str, Graph> = BTreeMap::new();
        for (path, module) in &self.modules {
            match path.as_slice() {
                _ if module.test => {}
                [t] => {
                    top.nodes.insert(t.clone());
                }
                [t, c] => {
                    inner
                        .entry(t.as_str())
                        .or_default()
                        .nodes
                        .insert(format!("{t}::{c}"));
                }
                _ => {}
            }
        }
        for r in &self.refs {
            let Some(path) = self.resolve(&r.module, &r.written, 0) else {
                continue;
            };
            let evidence = Evidence {
                file: r.file.clone(),
                line: r.line,
                written: r.written.join("::"),
                test: r.test,
            };
            match (r.module.as_slice(), self.owner(&path)) {
                ([a, ..], [b, ..]) if a != b => top.add(a, b, evidence),
                ([t, a, ..], [_, b, ..]) if a != b => {
                    let g = inner.entry(t.as_str()).or_default();
                    let (a, b) = (format!("{t}::{a}"), format!("{t}::{b}"));
                    if g.nodes.contains(&a) && g.nodes.contains(&b) {
                        g.add(&a, &b, evidence);
                    }
                }
                _ => {}
            }
        }
        (top, inner)
    }

    /// The edge lists and the cycles, and how many cycles.
    fn report(&self) -> (String, usize) {
        let (top, inner) = self.graphs();
        let mut out =
            String::from("top-level modules (\"(test)\": only from #[cfg(test)] code):\n");
        top.write_edges(&mut out, "", true);
        for (t, g) in &inner {
            if !g.edges.is_empty() {
                let _ = writeln!(out, "within {t}:");
                g.write_edges(&mut out, &format!("{t}::"), false);
            }
        }
        let mut cycles = 0;
        for g in std::iter::once(&top).chain(inner.values()) {
            for cycle in g.cycles() {
                cycles += 1;
                let evidence: Vec<_> = cycle.windows(2).map(|w| g.evidence(&w[0], &w[1])).collect();
                let _ = writeln!(
                    out,
                    "cycle: {} ({})",
                    cycle.join(" -> "),
                    evidence.join("; ")
                );
            }
        }
        if cycles == 0 {
            let nested: usize = inner.values().map(|g| g.nodes.len()).sum();
            let _ = writeln!(
                out,
                "no cycles among {} modules ({} top-level, {nested} one level down)",
                top.nodes.len() + nested,
                top.nodes.len()
            );
        }
        (out, cycles)
    }
}

#[cfg(test)]
mod tests;
