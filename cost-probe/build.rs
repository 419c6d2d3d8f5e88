//! Builds the eBPF object (`cost-probe-ebpf`, for the bpf target, with nightly and bpf-linker) and
//! leaves it in `OUT_DIR` for `include_bytes_aligned!`. `cargo xtask setup` installs what it needs.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for editors and pure-logic work); the binary then
//! carries an empty object and `attach` says so instead of loading.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("cost-probe");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "cost-probe-ebpf")
        .ok_or_else(|| anyhow!("cost-probe-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The eBPF crate's programs are compiled out on the host (`#[cfg(target_arch = "bpf")]`), so
    // the host build of the build-dependency never reads them and cargo would not notice an edit
    // that touches only them: watch its sources (and the shared types) directly.
    println!("cargo:rerun-if-changed={root_dir}/src");
    println!("cargo:rerun-if-changed={root_dir}/Cargo.toml");
    println!("cargo:rerun-if-changed={root_dir}/../cost-probe-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
