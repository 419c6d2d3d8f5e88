//! `cargo xtask check-tree`: what git tracks must make sense in a fresh clone.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Component, Path},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Git's mode for a symbolic link; the blob it names holds the link's target.
const SYMLINK: &[u8] = b"120000";

/// Fails, one line per file, if git tracks a symbolic link whose target is absolute or outside
/// the repository: such a link resolves only on the machine that made it.
pub fn check_tree(dir: &Path) -> anyhow::Result<()> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let top = Path::new(OsStr::from_bytes(top.trim_ascii_end()));
    let mut bad = Vec::new();
    for entry in git(top, &["ls-files", "-s", "-z"])?.split(|&b| b == 0) {
        if entry.is_empty() {
            continue;
        }
        // `<mode> <object> <stage>\t<path>`
        let Some(tab) = entry.iter().position(|&b| b == b'\t') else {
            bail!(
                "unexpected `git ls-files -s` entry: {}",
                String::from_utf8_lossy(entry)
            );
        };
        let mut fields = entry[..tab].split(|&b| b == b' ');
        if fields.next() != Some(SYMLINK) {
            continue;
        }
        let object = std::str::from_utf8(fields.next().unwrap_or_default())?;
        let link = Path::new(OsStr::from_bytes(&entry[tab + 1..]));
        // The staged blob, not the link on disk: it is what the next commit holds, even if the
        // work tree's copy has since been replaced by a directory.
        let target = git(top, &["cat-file", "blob", object])?;
        let target = Path::new(OsStr::from_bytes(&target));
        if leaves_repo(link, target) {
            bad.push(format!(
                "{} is a symbolic link to {}, outside the repository: a fresh clone cannot have it",
                link.display(),
                target.display()
            ));
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("\n"));
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("spawning git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Whether `target`, held by the link at `link` (relative to the repository root), names
/// something outside the repository. Lexical (`..` undoes the component before it): the answer
/// must not depend on what this machine happens to have outside the repository.
fn leaves_repo(link: &Path, target: &Path) -> bool {
    let mut depth = link.parent().map_or(0, |dir| {
        dir.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth == 0 => return true,
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink};

    use super::*;

    fn leaves(link: &str, target: &str) -> bool {
        leaves_repo(Path::new(link), Path::new(target))
    }

    #[test]
    fn absolute_targets_leave() {
        assert!(leaves(".venv-llama", "/opt/elsewhere/venv-llama"));
        assert!(leaves("a/b/link", "/"));
    }

    #[test]
    fn relative_targets_leave_only_above_the_root() {
        assert!(!leaves("link", "file"));
        assert!(!leaves("link", "."));
        assert!(!leaves("a/b/link", "../../file"));
        assert!(!leaves("a/link", "./b/../../c"));
        assert!(leaves("link", ".."));
        assert!(leaves("a/b/link", "../../../file"));
        // Climbing back in does not help: the walk left the repository on the way.
        assert!(leaves("a/link", "../../main/a/file"));
    }

    #[test]
    fn names_each_link_that_leaves_and_only_those() {
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path();
        let ok =
            |out: std::io::Result<std::process::Output>| assert!(out.unwrap().status.success());
        ok(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["init", "-q"])
            .output());
        fs::create_dir(dir.join("sub")).unwrap();
        symlink("/opt/elsewhere/venv-llama", dir.join(".venv-llama")).unwrap();
        symlink("../../elsewhere", dir.join("sub/up")).unwrap();
        symlink("../sub", dir.join("sub/inside")).unwrap();
        ok(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["add", "-A"])
            .output());
        // Replacing the link on disk does not hide the one staged.
        fs::remove_file(dir.join(".venv-llama")).unwrap();
        fs::create_dir(dir.join(".venv-llama")).unwrap();

        let err = check_tree(dir).unwrap_err().to_string();
        let lines: Vec<_> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].starts_with(".venv-llama is a symbolic link to /opt/elsewhere/venv-llama,")
        );
        assert!(lines[1].starts_with("sub/up is a symbolic link to ../../elsewhere,"));
    }
}
