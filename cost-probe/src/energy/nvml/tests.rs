//! NVML source tests against the replay backend and its fixtures.
use std::{fmt::Write as _, sync::atomic::Ordering};

use super::*;
use crate::energy::nvml::replay::ReplayNvml;

struct Run {
    src: NvmlSource,
    readings: Vec<Vec<Reading>>,
    shares: Vec<Vec<GpuShare>>,
}

/// Builds the source at tick 0 and samples every later tick.
fn drive(replay: ReplayNvml, targets: &[u32]) -> Run {
    let cursor = replay.cursor();
    let times: Vec<Nanos> = (0..replay.ticks()).map(|k| replay.time_of(k)).collect();
    let mut src = NvmlSource::new(Box::new(replay), times[0]).unwrap();
    src.set_targets(targets);
    let (mut readings, mut shares) = (Vec::new(), Vec::new());
    for (k, &now) in times.iter().enumerate().skip(1) {
        cursor.store(k, Ordering::SeqCst);
        let mut out = Vec::new();
        src.sample(&TickCtx { now, cpu: None }, &mut out);
        readings.push(out);
        shares.push(src.shares().copied().collect());
    }
    Run {
        src,
        readings,
        shares,
    }
}

fn deltas(r: &[Vec<Reading>], domain: u16) -> Vec<u64> {
    r.iter()
        .flat_map(|t| t.iter().filter(|x| x.domain == DomainIdx(domain)))
        .map(|x| x.delta.0)
        .collect()
}

#[test]
fn h100_energy_counter_deltas_in_microjoules() {
    let run = drive(ReplayNvml::fixture("h100_sxm_counter.ndjson"), &[4242]);
    assert_eq!(
        deltas(&run.readings, 0),
        [
            7_002_000, 7_002_000, 29_207_000, 65_120_000, 65_030_000, 7_030_000
        ]
    );
    let last = run.readings.last().unwrap()[0];
    // 8123637180 - 8123456789 mJ.
    assert_eq!(last.total, MicroJoules(180_391_000));
    assert_eq!(last.flags, ReadingFlags::default());
    let gpu = run.src.gpus().next().unwrap();
    assert_eq!(gpu.mode, GpuEnergyMode::Counter);
    assert_eq!(gpu.power_limit, Some(MilliWatts(700_000)));
    assert_eq!(gpu.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(run.src.domains()[0].id, "gpu:0");
    assert!(run.src.domains()[0].note.is_none());
}

#[test]
fn sole_user_gets_the_whole_gpu_and_absent_target_none() {
    let run = drive(ReplayNvml::fixture("h100_sxm_counter.ndjson"), &[4242]);
    let share = |k: usize| run.shares[k][0].target_share();
    // t=100: nothing running; t=200: only the target has a context; t=400: only its samples.
    assert_eq!(share(0), TargetShare::None);
    assert_eq!(share(1), TargetShare::All);
    assert_eq!(share(3), TargetShare::All);
    assert_eq!(run.shares[3][0].target_sm, 97);
    assert_eq!(run.shares[3][0].gpu_util, Some(97));
}

#[test]
fn pre_volta_gpu_integrates_power_with_trapezoid() {
    let run = drive(ReplayNvml::fixture("p100_power_only.ndjson"), &[4242]);
    // (26+26)/2 W × 0.1 s, (26+180)/2 × 0.1, (180+240)/2 × 0.1, 240 × 0.1, (240+30)/2 × 0.1.
    assert_eq!(
        deltas(&run.readings, 0),
        [2_600_000, 10_300_000, 21_000_000, 24_000_000, 13_500_000]
    );
    assert!(run.readings.iter().flatten().all(|r| r.flags.integrated));
    let d = &run.src.domains()[0];
    assert!(d.flags.integrated);
    assert!(d.note.as_deref().unwrap().contains("1 s average"));
    assert_eq!(
        run.src.gpus().next().unwrap().mode,
        GpuEnergyMode::IntegratedPower
    );
}

#[test]
fn integration_is_exact_over_odd_intervals() {
    // 333 ms at a constant 1 mW leaves sub-microjoule remainders that must carry.
    let text = r#"{"devices":[{"name":"x","uuid":"u","power_limit_mw":1}]}
{"t_ms":0,"gpus":[{"power_mw":1}]}
{"t_ms":333,"gpus":[{"power_mw":1}]}
{"t_ms":666,"gpus":[{"power_mw":1}]}
{"t_ms":1000,"gpus":[{"power_mw":1}]}"#;
    let run = drive(ReplayNvml::from_ndjson(text), &[]);
    // 1 mW × 1 s = 1000 µJ in total, split 333 / 333 / 334.
    assert_eq!(deltas(&run.readings, 0), [333, 333, 334]);
}

#[test]
fn lost_gpu_is_disabled_and_the_other_keeps_going() {
    let run = drive(
        ReplayNvml::fixture("h100x2_shared_gpu_lost.ndjson"),
        &[4242],
    );
    let counts: Vec<usize> = run.readings.iter().map(Vec::len).collect();
    assert_eq!(counts, [2, 1, 1]);
    assert_eq!(
        deltas(&run.readings, 0),
        [45_000_000, 45_000_000, 7_000_000]
    );
    assert_eq!(deltas(&run.readings, 1), [30_000_000]);
    let gpus: Vec<_> = run.src.gpus().collect();
    assert_eq!(gpus[0].mode, GpuEnergyMode::Counter);
    assert!(
        matches!(&gpus[1].mode, GpuEnergyMode::Disabled(why) if why.contains("fell off the bus"))
    );
}

#[test]
fn shared_gpu_is_split_by_sm_samples() {
    let run = drive(
        ReplayNvml::fixture("h100x2_shared_gpu_lost.ndjson"),
        &[4242],
    );
    // Tick 1: the replayed duplicate (already seen at priming) is not counted again.
    assert_eq!(
        run.shares[0][0].target_share(),
        TargetShare::Fraction {
            target: 60,
            total: 80
        }
    );
    assert_eq!(run.shares[0][1].target_share(), TargetShare::None);
    assert_eq!(
        run.shares[1][0].target_share(),
        TargetShare::Fraction {
            target: 30,
            total: 60
        }
    );
    // Tick 3: both hold contexts but the GPU idled, so no samples say how to split.
    assert_eq!(run.shares[2][0].target_share(), TargetShare::Unknown);
    assert_eq!(run.src.target_gpus().collect::<Vec<_>>(), [0]);
}

#[test]
fn gpu_with_no_energy_and_no_power_is_reported_not_faked() {
    let text = r#"{"devices":[{"name":"x","uuid":"u","power_limit_mw":1}]}
{"t_ms":0,"gpus":[{"running":[1]}]}
{"t_ms":100,"gpus":[{"running":[1]}]}"#;
    let run = drive(ReplayNvml::from_ndjson(text), &[1]);
    assert!(run.src.domains().is_empty());
    assert!(run.readings.iter().all(Vec::is_empty));
    let gpu = run.src.gpus().next().unwrap();
    assert!(matches!(&gpu.mode, GpuEnergyMode::Disabled(w) if w.contains("no power reading")));
    assert!(!gpu.process_stats);
}

#[test]
fn unsupported_process_stats_still_give_placement() {
    let text = r#"{"devices":[{"name":"x","uuid":"u","power_limit_mw":1}]}
{"t_ms":0,"gpus":[{"energy_mj":1,"running":[7]}]}
{"t_ms":100,"gpus":[{"energy_mj":2,"running":[7, 8]}]}"#;
    let run = drive(ReplayNvml::from_ndjson(text), &[7]);
    assert!(!run.src.gpus().next().unwrap().process_stats);
    assert_eq!(run.shares[0][0].target_share(), TargetShare::Unknown);
    assert!(run.shares[0][0].target_running && run.shares[0][0].others_running);
    assert_eq!(deltas(&run.readings, 0), [1000]);
}

#[test]
fn transient_errors_skip_ticks_without_losing_energy() {
    let text = r#"{"devices":[{"name":"x","uuid":"u","power_limit_mw":1}]}
{"t_ms":0,"gpus":[{"energy_mj":100,"running":[]}]}
{"t_ms":100,"gpus":[{"energy_mj":"Timeout","running":[]}]}
{"t_ms":200,"gpus":[{"energy_mj":"Timeout","running":[]}]}
{"t_ms":300,"gpus":[{"energy_mj":130,"running":[]}]}"#;
    let run = drive(ReplayNvml::from_ndjson(text), &[]);
    assert_eq!(deltas(&run.readings, 0), [30_000]);
    assert_eq!(run.src.gpus().next().unwrap().mode, GpuEnergyMode::Counter);
}

#[test]
fn endless_transient_errors_disable_after_limit() {
    let mut text = String::from(
        "{\"devices\":[{\"name\":\"x\",\"uuid\":\"u\",\"power_limit_mw\":1}]}\n\
         {\"t_ms\":0,\"gpus\":[{\"energy_mj\":1,\"running\":[]}]}\n",
    );
    for k in 1..=12 {
        let _ = writeln!(
            text,
            "{{\"t_ms\":{},\"gpus\":[{{\"energy_mj\":\"Unknown\"}}]}}",
            k * 100
        );
    }
    let run = drive(ReplayNvml::from_ndjson(&text), &[]);
    assert!(matches!(
        run.src.gpus().next().unwrap().mode,
        GpuEnergyMode::Disabled(_)
    ));
}

#[test]
fn missing_library_message_is_plain() {
    let msg = explain_init_error(&NvmlError::LibraryNotFound);
    assert_eq!(
        msg,
        "No NVIDIA GPU: libnvidia-ml.so.1 not found, so GPU energy is not measured"
    );
    assert!(explain_init_error(&NvmlError::DriverNotLoaded).contains("driver is not loaded"));
}

/// On this host (no NVIDIA driver) init must fail cleanly with the plain message; on a GPU host
/// it must enumerate.
#[test]
fn real_nvml_init_fails_cleanly_or_works() {
    match RealNvml::init(None) {
        Err(e) => {
            let msg = explain_init_error(&e);
            eprintln!("{msg}");
            assert!(msg.ends_with("so GPU energy is not measured"), "{msg}");
        }
        Ok(mut nvml) => {
            let n = nvml.device_count().unwrap();
            eprintln!("NVML present with {n} GPUs");
        }
    }
    let missing = RealNvml::init(Some(Path::new("/nonexistent/libnvidia-ml.so.1")));
    let e = missing.err().unwrap();
    assert!(explain_init_error(&e).starts_with("No NVIDIA GPU: libnvidia-ml.so.1 not found"));
}
