//! A fake powercap tree for tests and benchmarks that run without RAPL.
//!
//! Shape of a two-socket Intel server (kernel `Documentation/power/powercap/powercap.rst`): the
//! class dir holds `intel-rapl:N` (`package-N`) and `intel-rapl:N:0` (`dram`) with `name`,
//! `energy_uj` and `max_energy_range_uj`. Ranges are values seen on real Xeon hosts.
use std::{fs, path::Path};

/// Writes the tree under `root` and returns the class dir to use as the powercap root.
pub fn two_socket_server(root: &Path) -> std::path::PathBuf {
    let class = root.join("class/powercap");
    fs::create_dir_all(&class).unwrap();
    let zones = [
        ("intel-rapl:0", "package-0", 262_143_328_850_u64),
        ("intel-rapl:0:0", "dram", 65_712_999_613),
        ("intel-rapl:1", "package-1", 262_143_328_850),
        ("intel-rapl:1:0", "dram", 65_712_999_613),
    ];
    for (i, (zone, name, max)) in zones.iter().enumerate() {
        let dir = class.join(zone);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        fs::write(dir.join("energy_uj"), format!("{}\n", 1_000_000 * (i + 1))).unwrap();
        fs::write(dir.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }
    class
}
