//! Free disk space, checked before a command that builds everything: a disk that fills up
//! part-way through a build fails late and obscurely (the linker dies of SIGBUS once its
//! memory-mapped output cannot grow), so the shortfall is said first, in one line.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, bail};

const GIB: u64 = 1 << 30;

/// What `cargo xtask test` leaves under `target/`, `fuzz/target/` and `.venv-llama/` when run
/// from a fresh clone (measured: 5.8 GiB, 2.5 of them `target/debug`), with a little room.
pub const TEST: u64 = 13 * GIB / 2;
/// The same for `cargo xtask demo`, which builds only the release binary (measured: 1.3 GiB).
pub const DEMO: u64 = 2 * GIB;

/// The directories a run writes into, under the workspace root.
const BUILT: [&str; 3] = ["target", "fuzz/target", ".venv-llama"];

/// Fails with one line if the disk under `root` lacks room for what `cmd` still has to write:
/// `need` (what a run from a fresh clone writes) less what earlier runs left there.
pub fn ensure(root: &Path, cmd: &str, need: u64) -> anyhow::Result<()> {
    let free = available(root).with_context(|| format!("free space under {}", root.display()))?;
    let built: u64 = BUILT.iter().map(|d| disk_usage(&root.join(d))).sum();
    if let Some(msg) = shortfall(cmd, need, built, free) {
        bail!("{msg}");
    }
    Ok(())
}

fn shortfall(cmd: &str, need: u64, built: u64, free: u64) -> Option<String> {
    let still = need.saturating_sub(built);
    (free < still).then(|| {
        format!(
            "{cmd} writes about {} GiB of builds ({} GiB of them already there) and the disk has \
             {} GiB free: free some space first",
            gib(need),
            gib(built.min(need)),
            gib(free)
        )
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / GIB as f64)
}

/// Bytes available to an unprivileged user on the file system holding `path`.
fn available(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail * st.f_frsize)
}

/// Blocks allocated under `path` (as `du` counts them), without following links; 0 if absent.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return own;
    };
    own + entries
        .filter_map(Result::ok)
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_counts_what_earlier_runs_built() {
        // A fresh clone on a nearly full disk.
        assert_eq!(
            shortfall("cargo xtask test", 6 * GIB, 0, GIB).as_deref(),
            Some(
                "cargo xtask test writes about 6.0 GiB of builds (0.0 GiB of them already there) \
                 and the disk has 1.0 GiB free: free some space first"
            )
        );
        // A second run rebuilds little: the same free space is enough.
        assert_eq!(shortfall("cargo xtask test", 6 * GIB, 5 * GIB, GIB), None);
        assert_eq!(shortfall("cargo xtask test", 6 * GIB, 9 * GIB, 0), None);
    }

    #[test]
    fn measures_a_real_directory_and_file_system() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), vec![1u8; 64 * 1024]).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/g"), vec![1u8; 64 * 1024]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 128 * 1024, "{used}");
        assert_eq!(disk_usage(&dir.path().join("absent")), 0);
        assert!(available(dir.path()).unwrap() > 0);
        assert!(available(&dir.path().join("absent")).is_err());
    }
}
