//! Estimated CPU energy for hosts with no RAPL (VMs, most clouds): a linear power model in host
//! utilisation, `P = cpus × (idle + (max − idle) × busy/total)`, integrated tick by tick.
//!
//! Linear-in-utilisation is the model `SPECpower` curves are usually fitted with and what cloud
//! carbon tools use; it is an estimate, and every reading says so (`estimated`).
use serde::Serialize;

use super::{
    Domain, DomainClass, DomainIdx, EnergySource, MilliWatts, Reading, ReadingFlags, SourceKind,
    TickCtx, cputime::HostCpu,
};
use crate::units::{MicroJoules, Nanos};

/// Per logical CPU (each online CPU); rules supply the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CpuModelParams {
    pub idle_per_cpu: MilliWatts,
    pub max_per_cpu: MilliWatts,
}

const FLAGS: ReadingFlags = ReadingFlags {
    integrated: false,
    estimated: true,
};

/// The `cpu:model` domain.
pub struct CpuModelSource {
    params: CpuModelParams,
    domains: Vec<Domain>,
    last: Option<HostCpu>,
    /// Utilisation of the last interval with CPU-time progress, in ppm, reused when host CPU time
    /// has not advanced (ticks are 10 ms, a tick can see none).
    last_util_ppm: u64,
    total_nj: u128,
    reported: MicroJoules,
}

impl CpuModelSource {
    #[must_use]
    pub fn new(params: CpuModelParams) -> Self {
        let params = CpuModelParams {
            idle_per_cpu: params.idle_per_cpu,
            max_per_cpu: params.max_per_cpu.max(params.idle_per_cpu),
        };
        let domain = Domain {
            id: "cpu:model".to_owned(),
            class: DomainClass::CpuModel,
            source: SourceKind::CpuModel,
            label: format!(
                "CPU power model: {:.1} W idle, {:.1} W max per CPU × host CPU utilisation (cpuidle)",
                params.idle_per_cpu.watts(),
                params.max_per_cpu.watts()
            ),
            flags: FLAGS,
            note: Some("estimated: no RAPL on this host".to_owned()),
        };
        Self {
            params,
            domains: vec![domain],
            last: None,
            last_util_ppm: 0,
            total_nj: 0,
            reported: MicroJoules(0),
        }
    }

    /// Modelled power of the whole host at utilisation `util_ppm` (parts per million).
    #[must_use]
    pub fn power(&self, cpus: u32, util_ppm: u64) -> MilliWatts {
        let idle = self.params.idle_per_cpu.0;
        let span = self.params.max_per_cpu.0 - idle;
        let per_cpu = idle + span * util_ppm.min(1_000_000) / 1_000_000;
        MilliWatts(per_cpu * u64::from(cpus))
    }

    fn advance(&mut self, cur: &HostCpu) -> MicroJoules {
        let Some(prev) = self.last.replace(*cur) else {
            return MicroJoules(0);
        };
        let dt = cur.at.saturating_sub(prev.at);
        let total = cur.total.saturating_sub(prev.total);
        let busy = cur.busy.saturating_sub(prev.busy).min(total);
        if total > Nanos::ZERO {
            self.last_util_ppm = busy.0 * 1_000_000 / total.0;
        }
        let p = self.power(cur.cpus, self.last_util_ppm);
        // mW × ns = pJ; keep nJ so rounding never accumulates.
        self.total_nj += u128::from(p.0) * u128::from(dt.0) / 1_000;
        let now = MicroJoules((self.total_nj / 1_000) as u64);
        let delta = now.saturating_sub(self.reported);
        self.reported = now;
        delta
    }
}

impl EnergySource for CpuModelSource {
    fn kind(&self) -> SourceKind {
        SourceKind::CpuModel
    }

    fn domains(&self) -> &[Domain] {
        &self.domains
    }

    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
        let Some(cpu) = ctx.cpu else { return };
        let delta = self.advance(cpu);
        out.push(Reading {
            domain: DomainIdx(0),
            at: cpu.at,
            total: self.reported,
            delta,
            flags: FLAGS,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CpuModelParams {
        CpuModelParams {
            idle_per_cpu: MilliWatts::from_watts(2.0),
            max_per_cpu: MilliWatts::from_watts(10.0),
        }
    }

    fn host(at_ms: u64, busy_ms: u64, total_ms: u64) -> HostCpu {
        HostCpu {
            at: Nanos(at_ms * 1_000_000),
            busy: Nanos(busy_ms * 1_000_000),
            total: Nanos(total_ms * 1_000_000),
            cpus: 2,
            ..HostCpu::default()
        }
    }

    fn tick(m: &mut CpuModelSource, h: &HostCpu) -> Reading {
        let mut out = Vec::new();
        m.sample(
            &TickCtx {
                now: h.at,
                cpu: Some(h),
            },
            &mut out,
        );
        out[0]
    }

    #[test]
    fn idle_host_draws_idle_power() {
        let mut m = CpuModelSource::new(params());
        tick(&mut m, &host(0, 0, 0));
        // 1 s, 2 CPUs, fully idle: 2 × 2 W × 1 s = 4 J.
        let r = tick(&mut m, &host(1000, 0, 2000));
        assert_eq!(r.delta, MicroJoules(4_000_000));
        assert!(r.flags.estimated);
    }

    #[test]
    fn half_busy_host_is_halfway_between_idle_and_max() {
        let mut m = CpuModelSource::new(params());
        tick(&mut m, &host(0, 0, 0));
        // The proc_stat_vm_{a,b} fixture ratio: 101 busy of 440 ticks over 2.2 s.
        let r = tick(&mut m, &host(2200, 1010, 4400));
        // util = 229545 ppm → per CPU 2 W + 1.836 W (integer mW) = 3.836 W; × 2 × 2.2 s.
        assert_eq!(r.delta, MicroJoules(16_878_400));
        let full = m.power(2, 1_000_000);
        assert_eq!(full, MilliWatts(20_000));
    }

    #[test]
    fn stalled_proc_stat_reuses_last_utilisation() {
        let mut m = CpuModelSource::new(params());
        tick(&mut m, &host(0, 0, 0));
        tick(&mut m, &host(100, 200, 200));
        // /proc/stat did not move (sub-tick interval): still 100 % busy, 20 W × 50 ms = 1 J.
        let r = tick(&mut m, &host(150, 200, 200));
        assert_eq!(r.delta, MicroJoules(1_000_000));
    }

    #[test]
    fn no_cpu_sample_no_reading() {
        let mut m = CpuModelSource::new(params());
        let mut out = Vec::new();
        m.sample(
            &TickCtx {
                now: Nanos(1),
                cpu: None,
            },
            &mut out,
        );
        assert!(out.is_empty());
    }
}
