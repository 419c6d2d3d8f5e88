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
use proc_macro2::Span;
use syn::{
    Attribute, Expr, ExprLit, ImplItemFn, Item, ItemMod, ItemUse, Lit, Macro, Meta, Token, UseTree,
    punctuated::Punctuated,
    visit::{self, Visit},
};

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

struct Collector<'a> {
    krate: &'a mut Crate,
    queue: &'a mut VecDeque<Pending>,
    file: &'a Path,
    /// What `#[path]` on a `mod` outside any inline module is relative to.
    file_dir: PathBuf,
    /// Where the current module's `mod name;` files live.
    child_dir: PathBuf,
    inline: bool,
    module: ModPath,
    test: bool,
    /// A `use` inside a block is the function's, not an import of the module.
    blocks: usize,
}

impl Collector<'_> {
    fn reference(&mut self, written: Vec<String>, span: Span) {
        self.krate.refs.push(Ref {
            module: self.module.clone(),
            written,
            file: self.file.to_path_buf(),
            line: span.start().line,
            test: self.test,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => self.use_leaf(prefix, &n.ident, &n.ident),
            UseTree::Rename(r) => self.use_leaf(prefix, &r.ident, &r.rename),
            UseTree::Glob(g) => self.reference(prefix.clone(), g.star_token.span),
            UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident, name: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" {
            path.push(ident.to_string());
        }
        let name = if name == "self" {
            path.last().cloned()
        } else {
            Some(name.to_string())
        };
        if let Some(name) = name
            && self.blocks == 0
            && name != "_"
            && let Some(module) = self.krate.modules.get_mut(&self.module)
        {
            module.imports.insert(name, path.clone());
        }
        self.reference(path, ident.span());
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        let outer = self.test;
        self.test |= cfg_test(item_attrs(item));
        visit::visit_item(self, item);
        self.test = outer;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast ImplItemFn) {
        let outer = self.test;
        self.test |= cfg_test(&f.attrs);
        visit::visit_impl_item_fn(self, f);
        self.test = outer;
    }

    fn visit_block(&mut self, b: &'ast syn::Block) {
        self.blocks += 1;
        visit::visit_block(self, b);
        self.blocks -= 1;
    }

    fn visit_item_use(&mut self, u: &'ast ItemUse) {
        if u.leading_colon.is_none() {
            self.use_tree(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none()
            && let Some(first) = p.segments.first()
        {
            let written = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.reference(written, first.ident.span());
        }
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast Macro) {
        visit::visit_macro(self, m);
        // format!, vec!, assert! and the like take expressions, which syn leaves as tokens.
        if let Ok(args) = m.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }

    fn visit_item_mod(&mut self, m: &'ast ItemMod) {
        let name = m.ident.to_string();
        let path = path_attr(&m.attrs);
        let mut module = self.module.clone();
        module.push(name.clone());
        if let Some((_, items)) = &m.content {
            let child_dir = self.child_dir.join(path.unwrap_or(name));
            self.krate.add_module(module.clone(), self.file, self.test);
            let outer = (
                std::mem::replace(&mut self.module, module),
                std::mem::replace(&mut self.child_dir, child_dir),
                std::mem::replace(&mut self.inline, true),
                std::mem::replace(&mut self.blocks, 0),
            );
            for item in items {
                self.visit_item(item);
            }
            (self.module, self.child_dir, self.inline, self.blocks) = outer;
            return;
        }
        // A file found through `#[path]` holds its own `mod name;` files beside it, as mod.rs does.
        let candidates = match path {
            Some(p) if self.inline => vec![(self.child_dir.join(p), true)],
            Some(p) => vec![(self.file_dir.join(p), true)],
            None => vec![
                (self.child_dir.join(format!("{name}.rs")), false),
                (self.child_dir.join(&name).join("mod.rs"), true),
            ],
        };
        self.queue.push_back(Pending {
            candidates,
            module,
            test: self.test,
            declared: format!("{}:{}", self.file.display(), m.ident.span().start().line),
        });
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]`, or a `cfg(all(..))` that needs `test`.
fn cfg_test(attrs: &[Attribute]) -> bool {
    fn needs_test(meta: &Meta) -> bool {
        match meta {
            Meta::Path(p) => p.is_ident("test"),
            Meta::List(l) if l.path.is_ident("all") => l
                .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                .is_ok_and(|all| all.iter().any(needs_test)),
            _ => false,
        }
    }
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<Meta>().is_ok_and(|m| needs_test(&m)))
}

fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

struct Evidence {
    file: PathBuf,
    line: usize,
    written: String,
    test: bool,
}

#[derive(Default)]
struct Graph {
    nodes: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, Vec<Evidence>>>,
}

impl Graph {
    fn add(&mut self, from: &str, to: &str, evidence: Evidence) {
        self.edges
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default()
            .push(evidence);
    }

    /// The edges the cycle check counts: those used outside test code.
    fn live(&self, from: &str) -> impl Iterator<Item = &str> {
        self.edges
            .get(from)
            .into_iter()
            .flatten()
            .filter(|(_, ev)| ev.iter().any(|e| !e.test))
            .map(|(to, _)| to.as_str())
    }

    fn write_edges(&self, out: &mut String, prefix: &str, all_nodes: bool) {
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
    fn cycles(&self) -> BTreeSet<Vec<String>> {
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
    fn shortest<'g>(&'g self, from: &'g str, to: &str) -> Option<Vec<&'g str>> {
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
    fn evidence(&self, from: &str, to: &str) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(files: &[(&str, &str)]) -> Crate {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), (*s).to_owned()))
            .collect();
        let krate = Crate::load(|p| files.get(p).cloned());
        assert!(krate.problems.is_empty(), "{:?}", krate.problems);
        krate
    }

    fn report(files: &[(&str, &str)]) -> (String, usize) {
        load(files).report()
    }

    #[test]
    fn finds_module_files_as_rustc_does() {
        let krate = load(&[
            ("lib.rs", "mod a; mod b; mod c { mod d; }"),
            ("a.rs", "mod x; #[path = \"a_y.rs\"] mod y;"),
            ("a/x.rs", ""),
            ("a_y.rs", "mod z;"),
            ("z.rs", ""),
            (
                "b/mod.rs",
                "#[cfg(test)] #[path = \"b_tests.rs\"] mod tests;",
            ),
            ("b/b_tests.rs", "use crate::a::x;"),
            ("c/d.rs", ""),
        ]);
        let files: Vec<_> = krate
            .modules
            .iter()
            .map(|(m, module)| format!("{} {}", m.join("::"), module.file.display()))
            .collect();
        assert_eq!(
            files,
            [
                " lib.rs",
                "a a.rs",
                "a::x a/x.rs",
                "a::y a_y.rs",
                "a::y::z z.rs",
                "b b/mod.rs",
                "b::tests b/b_tests.rs",
                "c lib.rs",
                "c::d c/d.rs",
            ]
        );
        assert!(krate.modules[&vec!["b".to_owned(), "tests".to_owned()]].test);
        assert!(
            krate
                .refs
                .iter()
                .all(|r| r.test == (r.module == ["b", "tests"]))
        );
    }

    #[test]
    fn a_missing_module_file_is_named() {
        let files = HashMap::from([(PathBuf::from("lib.rs"), "\nmod gone;".to_owned())]);
        let krate = Crate::load(|p| files.get(p).cloned());
        assert_eq!(
            krate.problems,
            ["lib.rs:2: no file for the module: gone.rs or gone/mod.rs"]
        );
    }

    #[test]
    fn resolves_nested_use_groups_super_and_reexports() {
        let krate = load(&[
            ("lib.rs", "mod a; mod b;"),
            (
                "a/mod.rs",
                "mod x; mod y; pub use y::Thing; use crate::{b::{self, q::Q as R}, b::*};",
            ),
            ("a/x.rs", "fn f() { let _ = super::Thing::new(); }"),
            ("a/y.rs", ""),
            ("b/mod.rs", "pub mod q;"),
            ("b/q.rs", ""),
        ]);
        let resolved: BTreeSet<String> = krate
            .refs
            .iter()
            .filter_map(|r| krate.resolve(&r.module, &r.written, 0))
            .map(|p| krate.owner(&p).join("::"))
            .collect();
        assert_eq!(
            resolved,
            BTreeSet::from(["a::y", "b", "b::q"].map(String::from))
        );
    }

    #[test]
    fn a_use_back_is_a_cycle_with_its_lines() {
        let (out, cycles) = report(&[
            ("lib.rs", "pub mod alerts; pub mod output; pub mod units;"),
            (
                "alerts.rs",
                "use crate::units::J;\n\nfn f(r: crate::output::records::R) {}",
            ),
            ("output/mod.rs", "pub mod metrics; pub mod records;"),
            ("output/metrics.rs", "\nuse crate::alerts::Alert;"),
            ("output/records.rs", "#[cfg(test)]\nuse crate::units::J;"),
            ("units.rs", ""),
        ]);
        assert_eq!(cycles, 1, "{out}");
        assert!(out.contains("  alerts -> output, units\n"), "{out}");
        assert!(out.contains("  output -> alerts, units (test)\n"), "{out}");
        assert!(
            out.contains(
                "cycle: alerts -> output -> alerts \
                 (alerts.rs:3 uses crate::output::records::R; \
                 output/metrics.rs:2 uses crate::alerts::Alert)"
            ),
            "{out}"
        );
    }

    #[test]
    fn uses_back_from_tests_only_are_no_cycle() {
        let (out, cycles) = report(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::B;"),
            ("b.rs", "#[cfg(test)]\nmod tests { use crate::a::A; }"),
        ]);
        assert_eq!(cycles, 0, "{out}");
        assert!(out.contains("  b -> a (test)\n"), "{out}");
        assert!(
            out.ends_with("no cycles among 2 modules (2 top-level, 0 one level down)\n"),
            "{out}"
        );
    }

    #[test]
    fn a_child_using_its_parent_is_no_cycle_but_siblings_are() {
        let parent_only = report(&[
            ("lib.rs", "mod energy;"),
            (
                "energy/mod.rs",
                "mod rapl; mod sampler; pub use rapl::Rapl; struct Sample;",
            ),
            ("energy/rapl.rs", "use super::Sample;"),
            ("energy/sampler.rs", "use super::Rapl;"),
        ]);
        assert_eq!(parent_only.1, 0, "{}", parent_only.0);
        assert!(
            parent_only
                .0
                .contains("within energy:\n  sampler -> rapl\n")
        );

        // rapl reaches sampler through the parent's re-export: still a use of sampler.
        let (out, cycles) = report(&[
            ("lib.rs", "mod energy;"),
            (
                "energy/mod.rs",
                "mod rapl; mod sampler; pub use sampler::Sampler;",
            ),
            (
                "energy/rapl.rs",
                "fn f(s: super::Sampler) -> super::Sampler { s }",
            ),
            (
                "energy/sampler.rs",
                "fn g() { vec![crate::energy::rapl::read()]; }",
            ),
        ]);
        assert_eq!(cycles, 1, "{out}");
        assert!(
            out.contains(
                "cycle: energy::rapl -> energy::sampler -> energy::rapl \
                 (energy/rapl.rs:1 uses super::Sampler; \
                 energy/sampler.rs:1 uses crate::energy::rapl::read)"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_three_module_cycle_is_reported_once() {
        let (out, cycles) = report(&[
            ("lib.rs", "mod a; mod b; mod c;"),
            ("a.rs", "use crate::b::B; pub struct A;"),
            ("b.rs", "use crate::c::C; pub struct B;"),
            ("c.rs", "use crate::a::A; pub struct C;"),
        ]);
        assert_eq!(cycles, 1, "{out}");
        assert!(out.contains("cycle: a -> b -> c -> a ("), "{out}");
    }
}
