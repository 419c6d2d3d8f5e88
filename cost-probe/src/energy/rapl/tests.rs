//! RAPL powercap tests against fake sysfs trees.
use std::fs;

use super::*;
use crate::units::Nanos;

/// Real ranges seen in powercap dumps: Intel package (energy unit ~61 µJ) and server DRAM
/// (fixed 15.3 µJ unit: (2^32-1) × 15.3).
const PKG_MAX: u64 = 262_143_328_850;
const DRAM_MAX: u64 = 65_712_999_613;

/// Builds the real shape: zones live nested under
/// `devices/virtual/powercap/intel-rapl/` and the class dir holds symlinks to them.
fn zone(root: &Path, rel: &str, name: &str, energy: u64, max: u64) {
    let dev = root.join("devices/virtual/powercap").join(rel);
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("name"), format!("{name}\n")).unwrap();
    fs::write(dev.join("energy_uj"), format!("{energy}\n")).unwrap();
    fs::write(dev.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    fs::write(dev.join("enabled"), "1\n").unwrap();
    let class = root.join("class/powercap");
    fs::create_dir_all(&class).unwrap();
    let leaf = rel.rsplit('/').next().unwrap();
    std::os::unix::fs::symlink(&dev, class.join(leaf)).unwrap();
}

fn set(root: &Path, rel: &str, energy: u64) {
    let p = root
        .join("devices/virtual/powercap")
        .join(rel)
        .join("energy_uj");
    fs::write(p, format!("{energy}\n")).unwrap();
}

/// Two-socket Xeon server: package + dram per socket (dram is a subzone of its package).
fn two_socket(root: &Path) {
    fs::create_dir_all(root.join("devices/virtual/powercap/intel-rapl")).unwrap();
    zone(
        root,
        "intel-rapl/intel-rapl:0",
        "package-0",
        1_000_000,
        PKG_MAX,
    );
    zone(
        root,
        "intel-rapl/intel-rapl:0/intel-rapl:0:0",
        "dram",
        500,
        DRAM_MAX,
    );
    zone(
        root,
        "intel-rapl/intel-rapl:1",
        "package-1",
        2_000_000,
        PKG_MAX,
    );
    zone(
        root,
        "intel-rapl/intel-rapl:1/intel-rapl:1:0",
        "dram",
        700,
        DRAM_MAX,
    );
}

fn tick(src: &mut RaplSource, t: u64, out: &mut Vec<Reading>) {
    out.clear();
    src.sample(
        &TickCtx {
            now: Nanos(t),
            cpu: None,
        },
        out,
    );
}

#[test]
fn two_socket_server_with_dram_subzones() {
    let tmp = tempfile::tempdir().unwrap();
    two_socket(tmp.path());
    let d = discover(&tmp.path().join("class/powercap")).unwrap();
    let ids: Vec<_> = d.zones.iter().map(|z| z.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "rapl:package-0",
            "rapl:dram-0",
            "rapl:package-1",
            "rapl:dram-1"
        ]
    );
    assert_eq!(d.zones[1].class, Some(DomainClass::Dram));
    assert_eq!(d.zones[1].max_energy_range_uj, Some(DRAM_MAX));
    let mut src = RaplSource::open(&d).unwrap();
    let mut out = Vec::new();
    tick(&mut src, 1, &mut out);
    assert!(out.iter().all(|r| r.delta == MicroJoules(0)));
    // 100 ms at 180 W package-0, 12 W dram-0, 150 W package-1, 9 W dram-1.
    set(
        tmp.path(),
        "intel-rapl/intel-rapl:0",
        1_000_000 + 18_000_000,
    );
    set(
        tmp.path(),
        "intel-rapl/intel-rapl:0/intel-rapl:0:0",
        500 + 1_200_000,
    );
    set(
        tmp.path(),
        "intel-rapl/intel-rapl:1",
        2_000_000 + 15_000_000,
    );
    set(
        tmp.path(),
        "intel-rapl/intel-rapl:1/intel-rapl:1:0",
        700 + 900_000,
    );
    tick(&mut src, 2, &mut out);
    let deltas: Vec<_> = out.iter().map(|r| r.delta.0).collect();
    assert_eq!(deltas, [18_000_000, 1_200_000, 15_000_000, 900_000]);
}

#[test]
fn wrap_around_is_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let near_top = PKG_MAX - 4_000_000;
    zone(
        tmp.path(),
        "intel-rapl/intel-rapl:0",
        "package-0",
        near_top,
        PKG_MAX,
    );
    let d = discover(&tmp.path().join("class/powercap")).unwrap();
    let mut src = RaplSource::open(&d).unwrap();
    let mut out = Vec::new();
    tick(&mut src, 1, &mut out);
    // 10 J later the counter has passed the top and restarted.
    set(tmp.path(), "intel-rapl/intel-rapl:0", 5_999_999);
    tick(&mut src, 2, &mut out);
    assert_eq!(out[0].delta, MicroJoules(10_000_000));
    set(tmp.path(), "intel-rapl/intel-rapl:0", 6_999_999);
    tick(&mut src, 3, &mut out);
    assert_eq!(out[0].total, MicroJoules(11_000_000));
}

/// Client laptop (Tiger Lake style): package with core/uncore subzones, psys as its own
/// top-level zone, and an MMIO twin of package-0.
#[test]
fn client_with_psys_and_mmio_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    zone(r, "intel-rapl/intel-rapl:0", "package-0", 10, PKG_MAX);
    zone(
        r,
        "intel-rapl/intel-rapl:0/intel-rapl:0:0",
        "core",
        10,
        PKG_MAX,
    );
    zone(
        r,
        "intel-rapl/intel-rapl:0/intel-rapl:0:1",
        "uncore",
        10,
        PKG_MAX,
    );
    zone(r, "intel-rapl/intel-rapl:1", "psys", 10, PKG_MAX);
    zone(
        r,
        "intel-rapl-mmio/intel-rapl-mmio:0",
        "package-0",
        10,
        PKG_MAX,
    );
    let d = discover(&r.join("class/powercap")).unwrap();
    let by_zone = |n: &str| d.zones.iter().find(|z| z.zone == n).unwrap();
    assert_eq!(by_zone("intel-rapl:0:0").id, "rapl:core-0");
    assert_eq!(by_zone("intel-rapl:0:1").class, Some(DomainClass::Uncore));
    assert_eq!(by_zone("intel-rapl:1").id, "rapl:psys");
    assert_eq!(
        by_zone("intel-rapl-mmio:0").status,
        ZoneStatus::Duplicate("intel-rapl:0".to_owned())
    );
    assert_eq!(RaplSource::open(&d).unwrap().domains().len(), 4);
}

/// AMD Zen (the `intel-rapl` control type via the MSR driver): `package-N` with a `core`
/// subzone; AMD's energy unit is 2^-16 J, so the range is (2^32-1) × 15.2587890625 µJ.
#[test]
fn amd_names_map_to_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let amd_max = 65_535_999_984;
    zone(
        tmp.path(),
        "intel-rapl/intel-rapl:0",
        "package-0",
        10,
        amd_max,
    );
    zone(
        tmp.path(),
        "intel-rapl/intel-rapl:0/intel-rapl:0:0",
        "core",
        10,
        amd_max,
    );
    let d = discover(&tmp.path().join("class/powercap")).unwrap();
    assert_eq!(d.zones[0].id, "rapl:package-0");
    assert_eq!(d.zones[1].id, "rapl:core-0");
}

#[test]
fn stuck_counter_is_not_a_measurement() {
    let tmp = tempfile::tempdir().unwrap();
    two_socket(tmp.path());
    let mut d = discover(&tmp.path().join("class/powercap")).unwrap();
    // Only package-0 moves while we watch; the others stay put, like a board without DRAM
    // RAPL or a VM exposing zeros.
    let root = tmp.path().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut i = 1u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            set(&root, "intel-rapl/intel-rapl:0", 1_000_000 + i * 1000);
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // A long window so a loaded machine cannot starve the writer through all of it.
    check_advancing(&mut d, Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let readable: Vec<_> = d.readable().map(|z| z.id.as_str()).collect();
    assert_eq!(readable, ["rapl:package-0"]);
    assert!(
        d.zones[1]
            .status
            .describe()
            .contains("nothing updates this counter")
    );
}

#[test]
fn missing_root_is_reported_plainly() {
    let d = discover(Path::new("/nonexistent/powercap")).unwrap();
    assert!(!d.present);
    let err = RaplSource::open(&d).err().unwrap().to_string();
    assert!(err.contains("No RAPL"), "{err}");
}

#[test]
fn permission_denied_reads_as_need_root() {
    let e = io::Error::from(io::ErrorKind::PermissionDenied);
    assert_eq!(status_from_error(&e), ZoneStatus::Unreadable);
    assert!(ZoneStatus::Unreadable.describe().contains("need root"));
}

/// The real 0400 file: only meaningful when not root (root bypasses file modes).
#[test]
fn mode_0400_energy_file_is_unreadable_for_non_root() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: running as root, which can read mode 0400 files");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    zone(
        tmp.path(),
        "intel-rapl/intel-rapl:0",
        "package-0",
        10,
        PKG_MAX,
    );
    let f = tmp
        .path()
        .join("devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
    let d = discover(&tmp.path().join("class/powercap")).unwrap();
    assert_eq!(d.zones[0].status, ZoneStatus::Unreadable);
}

#[test]
fn zone_without_range_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    zone(
        tmp.path(),
        "intel-rapl/intel-rapl:0",
        "package-0",
        10,
        PKG_MAX,
    );
    let dir = tmp
        .path()
        .join("devices/virtual/powercap/intel-rapl/intel-rapl:0");
    fs::remove_file(dir.join("max_energy_range_uj")).unwrap();
    let d = discover(&tmp.path().join("class/powercap")).unwrap();
    assert!(matches!(d.zones[0].status, ZoneStatus::Broken(_)));
}
