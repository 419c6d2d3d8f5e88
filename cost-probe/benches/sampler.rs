//! One sampler tick over every source this host can offer without hardware: a fake two-socket
//! RAPL tree (4 zones), the real procfs/sysfs CPU time and the CPU power model; then the CPU
//! time mechanisms alone with a 200-thread target process (the bench binary re-executed), the
//! old one (`/proc/stat` + `/proc/PID/stat` ticks) and the new one (cpuidle + the process CPU
//! clock) in the same run, and the per-thread `schedstat` candidate.
use std::{
    fs::File,
    hint::black_box,
    io::{BufRead, BufReader},
    os::unix::fs::FileExt,
    path::Path,
    process::{Child, Command, Stdio},
};

use cost_probe::{
    energy::cputime::{CpuTimeSource, GroupClock, PidStatClock, PosixCpuClock, SYS_CPU},
    units::Nanos,
};
use criterion::Criterion;

#[path = "../tests/support/fake_rapl.rs"]
mod fake_rapl;

const CHILD_ENV: &str = "COST_PROBE_BENCH_THREADS";
const THREADS: usize = 200;

/// The target: this binary re-executed, holding `THREADS` threads (the main one included) that
/// sleep, as a server's idle workers do. Killed on drop.
struct Target(Child);

impl Target {
    fn spawn() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, THREADS.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn threaded_child(n: usize) {
    for _ in 1..n {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    println!("ready");
    loop {
        std::thread::park();
    }
}

fn tick(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut sampler = fake_rapl::sampler_over_fake_rapl(tmp.path());
    let mut snap = sampler.new_snapshot();
    c.bench_function("sampler_tick/rapl4+procfs+cpu_model", |b| {
        b.iter(|| {
            sampler.tick(&mut snap);
            black_box(&snap);
        });
    });

    let target = Target::spawn();
    let threads = std::fs::read_dir(format!("/proc/{}/task", target.pid()))
        .unwrap()
        .count();
    assert_eq!(threads, THREADS);
    sampler.set_targets(&[target.pid()]);
    c.bench_function(
        "sampler_tick/rapl4+cputime+cpu_model/200-thread target",
        |b| {
            b.iter(|| {
                sampler.tick(&mut snap);
                black_box(&snap);
            });
        },
    );

    let proc = Path::new("/proc");
    let mut old =
        CpuTimeSource::with_sources(proc, None, Box::new(PidStatClock::new(proc))).unwrap();
    let mut new = CpuTimeSource::open(proc).unwrap();
    let mut host_only = CpuTimeSource::open(proc).unwrap();
    println!("new mechanism: {}", new.describe());
    old.set_targets(&[target.pid()]);
    new.set_targets(&[target.pid()]);
    let mut at = 1;
    let mut bench = |name: &str, src: &mut CpuTimeSource| {
        c.bench_function(name, |b| {
            b.iter(|| {
                at += 1;
                black_box(src.sample(Nanos(at)).unwrap());
            });
        });
    };
    bench(
        "cputime/old: /proc/stat + /proc/PID/stat, 200 threads",
        &mut old,
    );
    bench(
        "cputime/new: cpuidle + process clock, 200 threads",
        &mut new,
    );
    bench(
        "cputime/new: host only (cpuidle + /proc/stat)",
        &mut host_only,
    );

    // The target side alone, then candidates measured for the record (docs/design.md "CPU
    // time").
    let pid = target.pid();
    let mut clocks: [(&str, Box<dyn GroupClock>); 2] = [
        (
            "target clock: process CPU clock + pidfd check, 200 threads",
            Box::new(PosixCpuClock::new()),
        ),
        (
            "target clock: /proc/PID/stat kept open, 200 threads",
            Box::new(PidStatClock::new(proc)),
        ),
    ];
    for (name, clock) in &mut clocks {
        clock.open(pid).unwrap();
        c.bench_function(name, |b| b.iter(|| black_box(clock.read(pid).unwrap())));
    }
    let tasks: Vec<File> = std::fs::read_dir(format!("/proc/{}/task", target.pid()))
        .unwrap()
        .map(|e| File::open(e.unwrap().path().join("schedstat")).unwrap())
        .collect();
    c.bench_function(
        "candidate: 200 × task/TID/schedstat kept open, pread",
        |b| {
            let mut buf = [0u8; 128];
            b.iter(|| {
                for f in &tasks {
                    black_box(f.read_at(&mut buf, 0).unwrap());
                }
            });
        },
    );
    let idle = File::open(Path::new(SYS_CPU).join("cpu0/cpuidle/state1/time"));
    if let Ok(idle) = idle {
        c.bench_function("candidate: one cpuidle time file, pread", |b| {
            let mut buf = [0u8; 32];
            b.iter(|| black_box(idle.read_at(&mut buf, 0).unwrap()));
        });
    }
    let stat = File::open("/proc/stat").unwrap();
    c.bench_function("candidate: /proc/stat head, pread", |b| {
        let mut buf = [0u8; 1024];
        b.iter(|| black_box(stat.read_at(&mut buf, 0).unwrap()));
    });
}

fn main() {
    if let Some(n) = std::env::var_os(CHILD_ENV) {
        threaded_child(n.to_str().and_then(|s| s.parse().ok()).unwrap_or(THREADS));
        return;
    }
    tick(&mut Criterion::default().configure_from_args());
    Criterion::default().configure_from_args().final_summary();
}
