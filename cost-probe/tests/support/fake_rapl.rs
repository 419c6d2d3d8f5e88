//! A fake powercap tree for tests and benchmarks that run without RAPL.
//!
//! Shape of a two-socket Intel server (kernel `Documentation/power/powercap/powercap.rst`): the
//! class dir holds `intel-rapl:N` (`package-N`) and `intel-rapl:N:0` (`dram`) with `name`,
//! `energy_uj` and `max_energy_range_uj`. Ranges are values seen on real Xeon hosts.
use std::{fs, path::Path, time::Duration};

use cost_probe::energy::{
    MilliWatts, Roots,
    cpu_model::{CpuModelParams, CpuModelSource},
    sampler::{Sampler, SamplerBuilder, SamplerConfig},
};

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

/// The sampler the tick benchmark and the allocation test measure: the fake two-socket tree
/// (4 zones), the real procfs with this process as the target, and the CPU power model.
pub fn sampler_over_fake_rapl(tmp: &Path) -> Sampler {
    let roots = Roots {
        powercap: two_socket_server(tmp),
        event_source: tmp.join("no-event-source"),
        nvml_lib: Some(tmp.join("no-libnvidia-ml.so.1")),
        ..Roots::default()
    };
    let model = CpuModelSource::new(CpuModelParams {
        idle_per_cpu: MilliWatts::from_watts(3.0),
        max_per_cpu: MilliWatts::from_watts(12.0),
    });
    let mut sampler = SamplerBuilder::new(roots)
        .config(SamplerConfig {
            liveness_window: Duration::ZERO,
            ..SamplerConfig::default()
        })
        .without_nvml()
        .source(Box::new(model))
        .build();
    sampler.set_targets(&[std::process::id()]);
    assert_eq!(sampler.domains().len(), 5, "{:?}", sampler.status());
    sampler
}
