//! Rebuild when bpf-linker changes (aya-template's imperfect stand-in for an artifact dependency).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
