//! Test-only NVML backend that replays per-tick values from NDJSON fixtures
//! (`tests/fixtures/energy/nvml/*.ndjson`).
//!
//! Format: lines starting with `#` are comments; the first JSON line is
//! `{"devices":[{"name":…,"uuid":…,"power_limit_mw":…}]}`; each further line is one tick,
//! `{"t_ms":…,"gpus":[…]}`, where a GPU is either an object of call results or a string naming
//! the NVML error every call returns (`"GpuLost"`). Inside an object each field is a value or an
//! error name; a missing field means `NotSupported`.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde::Deserialize;

use super::{GpuUtilization, NvmlBackend, NvmlError, ProcessSample};
use crate::energy::MilliWatts;
use crate::units::Nanos;

#[derive(Deserialize)]
struct Header {
    devices: Vec<Device>,
}

#[derive(Deserialize)]
struct Device {
    name: String,
    uuid: String,
    power_limit_mw: u64,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Val<T> {
    Ok(T),
    Err(String),
}

impl<T> Default for Val<T> {
    fn default() -> Self {
        Self::Err("NotSupported".to_owned())
    }
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
struct GpuStep {
    #[serde(default)]
    energy_mj: Val<u64>,
    #[serde(default)]
    power_mw: Val<u64>,
    #[serde(default)]
    util: Val<[u32; 2]>,
    /// `[pid, timestamp_us, sm_util]`
    #[serde(default)]
    procs: Val<Vec<[u64; 3]>>,
    #[serde(default)]
    running: Val<Vec<u32>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum GpuEntry {
    Ok(GpuStep),
    Err(String),
}

#[derive(Deserialize)]
struct Step {
    t_ms: u64,
    gpus: Vec<GpuEntry>,
}

fn error(name: &str) -> NvmlError {
    match name {
        "NotSupported" => NvmlError::NotSupported,
        "GpuLost" => NvmlError::GpuLost,
        "NotFound" => NvmlError::NotFound,
        "NoPermission" => NvmlError::NoPermission,
        "Timeout" => NvmlError::Timeout,
        "ResetRequired" => NvmlError::ResetRequired,
        "Unknown" => NvmlError::Unknown,
        other => panic!("fixture names unknown NVML error {other:?}"),
    }
}

pub(crate) struct ReplayNvml {
    devices: Vec<Device>,
    steps: Vec<Step>,
    cursor: Arc<AtomicUsize>,
}

impl ReplayNvml {
    pub(crate) fn from_ndjson(text: &str) -> Self {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let header: Header = serde_json::from_str(lines.next().expect("header line")).unwrap();
        let steps: Vec<Step> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(!steps.is_empty(), "fixture has no ticks");
        Self {
            devices: header.devices,
            steps,
            cursor: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn fixture(name: &str) -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/energy/nvml")
            .join(name);
        Self::from_ndjson(&std::fs::read_to_string(&path).unwrap())
    }

    /// Shared handle: store `k` to make the backend answer with tick `k`.
    pub(crate) fn cursor(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.cursor)
    }

    /// Monotonic time of tick `k` (fixture `t_ms` plus an arbitrary boot offset).
    pub(crate) fn time_of(&self, k: usize) -> Nanos {
        Nanos(5_000_000_000 + self.steps[k].t_ms * 1_000_000)
    }

    pub(crate) fn ticks(&self) -> usize {
        self.steps.len()
    }

    fn gpu(&self, index: u32) -> Result<GpuStep, NvmlError> {
        let k = self.cursor.load(Ordering::SeqCst).min(self.steps.len() - 1);
        match self.steps[k].gpus.get(index as usize) {
            Some(GpuEntry::Ok(g)) => Ok(g.clone()),
            Some(GpuEntry::Err(e)) => Err(error(e)),
            None => Err(NvmlError::InvalidArg),
        }
    }
}

fn get<T: Clone>(v: &Val<T>) -> Result<T, NvmlError> {
    match v {
        Val::Ok(t) => Ok(t.clone()),
        Val::Err(e) => Err(error(e)),
    }
}

impl NvmlBackend for ReplayNvml {
    fn device_count(&mut self) -> Result<u32, NvmlError> {
        Ok(self.devices.len() as u32)
    }
    fn name(&mut self, index: u32) -> Result<String, NvmlError> {
        Ok(self.devices[index as usize].name.clone())
    }
    fn uuid(&mut self, index: u32) -> Result<String, NvmlError> {
        Ok(self.devices[index as usize].uuid.clone())
    }
    fn power_limit(&mut self, index: u32) -> Result<MilliWatts, NvmlError> {
        Ok(MilliWatts(self.devices[index as usize].power_limit_mw))
    }
    fn total_energy_mj(&mut self, index: u32) -> Result<u64, NvmlError> {
        get(&self.gpu(index)?.energy_mj)
    }
    fn power_usage(&mut self, index: u32) -> Result<MilliWatts, NvmlError> {
        get(&self.gpu(index)?.power_mw).map(MilliWatts)
    }
    fn utilization(&mut self, index: u32) -> Result<GpuUtilization, NvmlError> {
        let [gpu, memory] = get(&self.gpu(index)?.util)?;
        Ok(GpuUtilization { gpu, memory })
    }
    fn process_utilization(
        &mut self,
        index: u32,
        last_seen_us: u64,
        out: &mut Vec<ProcessSample>,
    ) -> Result<(), NvmlError> {
        // NVML returns only samples newer than the cursor; so does the replay.
        for [pid, ts, sm] in get(&self.gpu(index)?.procs)? {
            if ts > last_seen_us {
                out.push(ProcessSample {
                    pid: pid as u32,
                    timestamp_us: ts,
                    sm_util: sm as u32,
                });
            }
        }
        Ok(())
    }
    fn running_compute_pids(&mut self, index: u32, out: &mut Vec<u32>) -> Result<(), NvmlError> {
        out.extend(get(&self.gpu(index)?.running)?);
        Ok(())
    }
}
