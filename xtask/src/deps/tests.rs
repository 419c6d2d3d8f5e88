use std::{collections::HashMap, path::PathBuf};

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
