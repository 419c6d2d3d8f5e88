//! RAPL through powercap sysfs (`/sys/class/powercap`).
//!
//! Layout (kernel `Documentation/power/powercap/powercap.rst`): the class dir holds one symlink
//! per zone, `intel-rapl:N` for each package (or `psys`) and `intel-rapl:N:M` for its subzones
//! (`core`, `uncore`, `dram`), plus `intel-rapl-mmio:N` on parts that also expose the package
//! through MMIO. AMD Zen hosts use the same `intel-rapl` control type with `package-N` names.
//! Each zone has `name`, `energy_uj` (mode 0400 since CVE-2020-8694) and `max_energy_range_uj`.
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use super::{
    Counter, CounterRange, Domain, DomainClass, DomainIdx, EnergyError, EnergySource, ReadAt,
    Reading, ReadingFlags, SourceKind, TickCtx, parse_u64, read_into, read_text,
};
use crate::units::MicroJoules;

/// Whether a zone can be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum ZoneStatus {
    Readable,
    /// `energy_uj` exists but this user may not read it.
    Unreadable,
    /// An MMIO view of a zone already read through MSR; reading both would count it twice.
    Duplicate(String),
    /// Something else is wrong (missing file, unparsable value, unknown zone name).
    Broken(String),
}

/// One powercap zone as found on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Zone {
    /// Directory name, e.g. `intel-rapl:0:1`.
    pub zone: String,
    /// The zone's `name` file, e.g. `dram`.
    pub name: String,
    /// Domain id we publish, e.g. `rapl:dram-0`; empty when the name is not one we know.
    pub id: String,
    pub class: Option<DomainClass>,
    pub mmio: bool,
    pub max_energy_range_uj: Option<u64>,
    pub status: ZoneStatus,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// What a powercap root contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Discovery {
    pub root: PathBuf,
    /// False when the root does not exist (no powercap / no RAPL driver, e.g. most VMs).
    pub present: bool,
    pub zones: Vec<Zone>,
}

impl Discovery {
    pub fn readable(&self) -> impl Iterator<Item = &Zone> {
        self.zones
            .iter()
            .filter(|z| z.status == ZoneStatus::Readable)
    }
}

/// Lists all RAPL zones under `root` and checks each one can be read.
pub fn discover(root: &Path) -> Result<Discovery, EnergyError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Discovery {
                root: root.to_owned(),
                present: false,
                zones: Vec::new(),
            });
        }
        Err(e) => return Err(EnergyError::io(root, e)),
    };
    let mut found: Vec<(bool, Vec<u32>, String)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EnergyError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (mmio, rest) = if let Some(r) = name.strip_prefix("intel-rapl-mmio:") {
            (true, r)
        } else if let Some(r) = name.strip_prefix("intel-rapl:") {
            (false, r)
        } else {
            continue;
        };
        let Some(path) = rest
            .split(':')
            .map(|p| p.parse::<u32>().ok())
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        found.push((mmio, path, name));
    }
    // MSR zones first so an MMIO twin is recognised as the duplicate, then by index.
    found.sort();
    let mut zones: Vec<Zone> = Vec::with_capacity(found.len());
    for (mmio, path, dir_name) in &found {
        let dir = root.join(dir_name);
        let name = read_text(&dir.join("name")).unwrap_or_default();
        let parent_name = if path.len() > 1 {
            let prefix = if *mmio {
                "intel-rapl-mmio"
            } else {
                "intel-rapl"
            };
            read_text(&root.join(format!("{prefix}:{}", path[0])).join("name")).ok()
        } else {
            None
        };
        let (id, class) = zone_identity(&name, parent_name.as_deref());
        let mut zone = Zone {
            zone: dir_name.clone(),
            name,
            id,
            class,
            mmio: *mmio,
            max_energy_range_uj: None,
            status: ZoneStatus::Readable,
            dir,
        };
        zone.status = check_zone(&mut zone, &zones);
        zones.push(zone);
    }
    Ok(Discovery {
        root: root.to_owned(),
        present: true,
        zones,
    })
}

/// Maps a zone's `name` (and its package's, for subzones) to our domain id and class.
fn zone_identity(name: &str, parent: Option<&str>) -> (String, Option<DomainClass>) {
    if name == "psys" {
        return ("rapl:psys".to_owned(), Some(DomainClass::Psys));
    }
    if name.starts_with("package-") {
        // `package-0`, or `package-0-die-1` on multi-die parts.
        return (format!("rapl:{name}"), Some(DomainClass::CpuPackage));
    }
    let class = match name {
        "dram" => DomainClass::Dram,
        "core" => DomainClass::Core,
        "uncore" => DomainClass::Uncore,
        _ => return (String::new(), None),
    };
    let socket = parent
        .and_then(|p| p.strip_prefix("package-"))
        .unwrap_or("0");
    (format!("rapl:{name}-{socket}"), Some(class))
}

fn check_zone(zone: &mut Zone, earlier: &[Zone]) -> ZoneStatus {
    if zone.class.is_none() {
        return ZoneStatus::Broken(format!("unknown RAPL zone name {:?}", zone.name));
    }
    if zone.mmio
        && let Some(twin) = earlier
            .iter()
            .find(|z| !z.mmio && z.id == zone.id && z.status == ZoneStatus::Readable)
    {
        return ZoneStatus::Duplicate(twin.zone.clone());
    }
    let range_path = zone.dir.join("max_energy_range_uj");
    match read_text(&range_path) {
        Ok(t) => match parse_u64(t.as_bytes()) {
            Some(v) if v > 0 => zone.max_energy_range_uj = Some(v),
            _ => {
                return ZoneStatus::Broken(format!(
                    "max_energy_range_uj is {t:?}, so wrap-around cannot be handled"
                ));
            }
        },
        Err(e) => return ZoneStatus::Broken(e.to_string()),
    }
    let energy_path = zone.dir.join("energy_uj");
    let read = File::open(&energy_path).and_then(|f| {
        let mut buf = [0u8; 32];
        let bytes = read_into(ReadAt::start(&f), &mut buf)?;
        parse_u64(bytes).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a number"))
    });
    match read {
        Ok(_) => ZoneStatus::Readable,
        Err(e) => status_from_error(&e),
    }
}

/// How long [`check_advancing`] and the perf probe watch a counter before calling it stuck.
pub const LIVENESS_WINDOW: Duration = Duration::from_millis(50);

/// Marks readable zones whose `energy_uj` does not move within `window` as broken. RAPL updates
/// about every millisecond, so a still counter is not idle hardware but one nobody updates
/// (DRAM RAPL unsupported by the board, or a hypervisor that exposes the interface with zeros);
/// using it would report 0 J as a measurement.
pub fn check_advancing(d: &mut Discovery, window: Duration) {
    if window.is_zero() {
        return;
    }
    let read = |z: &Zone| {
        let mut buf = [0u8; 32];
        File::open(z.dir.join("energy_uj")).ok().and_then(|f| {
            read_into(ReadAt::start(&f), &mut buf)
                .ok()
                .and_then(parse_u64)
        })
    };
    let first: Vec<Option<u64>> = d
        .zones
        .iter()
        .map(|z| {
            (z.status == ZoneStatus::Readable)
                .then(|| read(z))
                .flatten()
        })
        .collect();
    if first.iter().all(Option::is_none) {
        return;
    }
    std::thread::sleep(window);
    for (z, a) in d.zones.iter_mut().zip(first) {
        if let Some(a) = a
            && read(z) == Some(a)
        {
            z.status = ZoneStatus::Broken(format!(
                "energy_uj stayed at {a} for {} ms: nothing updates this counter \
                 (unsupported by the platform or hidden by a hypervisor)",
                window.as_millis()
            ));
        }
    }
}

/// Read errors as a user should see them.
fn status_from_error(e: &io::Error) -> ZoneStatus {
    match e.kind() {
        io::ErrorKind::PermissionDenied => ZoneStatus::Unreadable,
        io::ErrorKind::InvalidData => ZoneStatus::Broken("energy_uj is not a number".to_owned()),
        _ => ZoneStatus::Broken(format!("energy_uj: {e}")),
    }
}

impl ZoneStatus {
    /// Plain words for the doctor.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Readable => "readable".to_owned(),
            Self::Unreadable => "present but unreadable (need root: energy_uj is mode 0400 since \
                                 CVE-2020-8694)"
                .to_owned(),
            Self::Duplicate(of) => format!("same counter as {of} (MSR), not read twice"),
            Self::Broken(why) => format!("not usable: {why}"),
        }
    }
}

struct OpenZone {
    file: File,
    path: PathBuf,
    counter: Counter,
    total: MicroJoules,
    failed: bool,
}

/// Reads every readable RAPL zone each tick, through kept-open `energy_uj` files.
pub struct RaplSource {
    domains: Vec<Domain>,
    zones: Vec<OpenZone>,
}

impl RaplSource {
    /// Opens the readable zones of a discovery. Fails with [`EnergyError::Unavailable`] when
    /// there are none, with the reason in words.
    pub fn open(discovery: &Discovery) -> Result<Self, EnergyError> {
        let mut domains = Vec::new();
        let mut zones = Vec::new();
        for z in discovery.readable() {
            let (Some(class), Some(max)) = (z.class, z.max_energy_range_uj) else {
                continue;
            };
            let path = z.dir.join("energy_uj");
            let file = File::open(&path).map_err(|e| EnergyError::io(&path, e))?;
            let mut counter = Counter::new(CounterRange::WrapsAfter(max));
            let mut buf = [0u8; 32];
            let first = read_into(ReadAt::start(&file), &mut buf)
                .ok()
                .and_then(parse_u64)
                .ok_or_else(|| EnergyError::Parse {
                    path: path.clone(),
                    what: "energy_uj",
                })?;
            counter.observe(first);
            domains.push(Domain {
                id: z.id.clone(),
                class,
                source: SourceKind::Powercap,
                label: format!("{} ({})", z.zone, z.name),
                flags: ReadingFlags::default(),
                note: None,
            });
            zones.push(OpenZone {
                file,
                path,
                counter,
                total: MicroJoules(0),
                failed: false,
            });
        }
        if zones.is_empty() {
            return Err(EnergyError::Unavailable(describe_absence(discovery)));
        }
        Ok(Self { domains, zones })
    }
}

/// Why powercap gives us nothing, in words.
#[must_use]
pub fn describe_absence(d: &Discovery) -> String {
    if !d.present {
        return format!(
            "No RAPL: {} does not exist (no powercap driver; usual inside VMs)",
            d.root.display()
        );
    }
    if d.zones.is_empty() {
        return format!("No RAPL zones under {}", d.root.display());
    }
    if d.zones.iter().any(|z| z.status == ZoneStatus::Unreadable) {
        return "RAPL zones present but energy_uj is unreadable (need root)".to_owned();
    }
    "RAPL zones present but none could be read".to_owned()
}

impl EnergySource for RaplSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Powercap
    }

    fn domains(&self) -> &[Domain] {
        &self.domains
    }

    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
        let mut buf = [0u8; 32];
        for (i, z) in self.zones.iter_mut().enumerate() {
            if z.failed {
                continue;
            }
            let raw = match read_into(ReadAt::start(&z.file), &mut buf) {
                Ok(bytes) => parse_u64(bytes),
                Err(e) => {
                    z.failed = true;
                    log::warn!("RAPL {}: read failed, zone disabled: {e}", z.path.display());
                    continue;
                }
            };
            let Some(raw) = raw else {
                continue;
            };
            let delta = MicroJoules(z.counter.observe(raw));
            z.total += delta;
            out.push(Reading {
                domain: DomainIdx(i as u16),
                at: ctx.now,
                total: z.total,
                delta,
                flags: ReadingFlags::default(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
