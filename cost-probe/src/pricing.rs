//! Dollars and CO2 for a request's joules and device-seconds. Pure; f64 from here on.
//!
//! energy $ = kWh × PUE × $/kWh; capacity $ = device-seconds × $/device-hour ÷ 3600 (GPU-seconds
//! at the GPU model's hourly price, CPU core-seconds at $/core-hour; DRAM's capacity is part of
//! the host and not priced separately); egress $ = response bytes ÷ 10^9 × $/GB (decimal GB,
//! the unit Azure bills; AWS and GCP bill per 2^30 bytes, so their list price × 0.9313 is the
//! figure per 10^9); CO2 g = kWh × PUE × g/kWh.

use serde::Serialize;

use crate::attribution::RequestEnergy;
use crate::rules::Rules;
use crate::units::MicroJoules;

const JOULES_PER_KWH: f64 = 3.6e6;
/// Egress is priced per decimal gigabyte.
const BYTES_PER_GB: f64 = 1e9;

/// The prices that apply to one target's requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub usd_per_kwh: f64,
    pub pue: f64,
    pub carbon_g_per_kwh: f64,
    pub gpu_usd_per_hour: f64,
    pub cpu_usd_per_core_hour: f64,
    pub egress_usd_per_gb: f64,
}

impl Prices {
    /// Prices from rules, for the GPU model the target runs on (NVML name; `None` on a host
    /// without a GPU, where the `default` entry is kept but no GPU-seconds accrue).
    #[must_use]
    pub fn from_rules(rules: &Rules, gpu_model: Option<&str>) -> Self {
        let (_, gpu) = rules.gpu_for(gpu_model.unwrap_or(""));
        Self {
            usd_per_kwh: rules.energy.price_usd_per_kwh,
            pue: rules.energy.pue,
            carbon_g_per_kwh: rules.energy.carbon_g_per_kwh,
            gpu_usd_per_hour: gpu.usd_per_hour(),
            cpu_usd_per_core_hour: rules.cpu.usd_per_core_hour,
            egress_usd_per_gb: rules.network.egress_usd_per_gb,
        }
    }

    /// Facility energy cost and CO2 of IT energy (also for the idle bucket).
    #[must_use]
    pub fn energy(&self, energy: MicroJoules) -> (f64, f64) {
        let facility_kwh = energy.joules() / JOULES_PER_KWH * self.pue;
        (
            facility_kwh * self.usd_per_kwh,
            facility_kwh * self.carbon_g_per_kwh,
        )
    }

    /// Cost of device-time: GPU-seconds and CPU core-seconds.
    #[must_use]
    pub fn capacity(&self, gpu_seconds: f64, cpu_core_seconds: f64) -> f64 {
        (gpu_seconds * self.gpu_usd_per_hour + cpu_core_seconds * self.cpu_usd_per_core_hour)
            / 3600.0
    }

    /// Cost of the bytes a response sent.
    #[must_use]
    pub fn egress(&self, bytes_out: u64) -> f64 {
        bytes_out as f64 / BYTES_PER_GB * self.egress_usd_per_gb
    }

    #[must_use]
    pub fn price(
        &self,
        request: &RequestEnergy,
        tokens: Option<u64>,
        bytes_out: u64,
    ) -> RequestCost {
        let (energy_usd, co2_g) = self.energy(request.total());
        let secs = request.device_seconds();
        let capacity = self.capacity(secs.gpu, secs.cpu);
        let egress = self.egress(bytes_out);
        let total = energy_usd + capacity + egress;
        RequestCost {
            cost_usd: CostUsd {
                energy: energy_usd,
                capacity,
                egress,
                total,
            },
            co2_g,
            usd_per_1k_tokens: tokens.filter(|t| *t > 0).map(|t| total * 1000.0 / t as f64),
        }
    }
}

/// `cost_usd {energy, capacity, egress, total}` of the request record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CostUsd {
    pub energy: f64,
    pub capacity: f64,
    /// Response bytes at `[network] egress_usd_per_gb`.
    pub egress: f64,
    pub total: f64,
}

/// A request's price, in the record's shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RequestCost {
    pub cost_usd: CostUsd,
    pub co2_g: f64,
    /// Omitted when tokens are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_per_1k_tokens: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::PerClass;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12_f64.max(b.abs() * 1e-9)
    }

    fn prices() -> Prices {
        Prices {
            usd_per_kwh: 0.12,
            pue: 1.5,
            carbon_g_per_kwh: 400.0,
            gpu_usd_per_hour: 3.6,
            cpu_usd_per_core_hour: 0.036,
            egress_usd_per_gb: 0.0,
        }
    }

    fn request() -> RequestEnergy {
        RequestEnergy {
            // 360 J + 36 J + 0 = 396 J = 1.1e-4 kWh.
            energy: PerClass {
                gpu: MicroJoules(360_000_000),
                cpu: MicroJoules(36_000_000),
                dram: MicroJoules(0),
            },
            // 0.5 GPU-s, 2 core-s.
            device_ns: PerClass {
                gpu: 500_000_000,
                cpu: 2_000_000_000,
                dram: 7_000_000_000,
            },
            ..RequestEnergy::default()
        }
    }

    #[test]
    fn hand_computed_request_price() {
        let c = prices().price(&request(), Some(500), 0);
        // 1.1e-4 kWh × 1.5 × $0.12 = $1.98e-5; × 400 g = 0.066 g.
        assert!(close(c.cost_usd.energy, 1.98e-5), "{c:?}");
        assert!(close(c.co2_g, 0.066), "{c:?}");
        // 0.5 s × $3.6/h ÷ 3600 = $5e-4; 2 s × $0.036/h ÷ 3600 = $2e-5.
        assert!(close(c.cost_usd.capacity, 5.2e-4), "{c:?}");
        assert!(close(c.cost_usd.total, 5.398e-4), "{c:?}");
        // 500 tokens: $5.398e-4 × 1000 / 500.
        assert!(close(c.usd_per_1k_tokens.unwrap(), 1.0796e-3), "{c:?}");
    }

    #[test]
    fn egress_is_priced_per_decimal_gb_and_is_part_of_the_total() {
        let p = Prices {
            egress_usd_per_gb: 0.09,
            ..prices()
        };
        // 2.5e9 bytes × $0.09 per 10^9 bytes = $0.225.
        assert!(close(p.egress(2_500_000_000), 0.225));
        let c = p.price(&request(), Some(500), 2_500_000_000);
        assert!(close(c.cost_usd.egress, 0.225), "{c:?}");
        assert!(close(c.cost_usd.total, 5.398e-4 + 0.225), "{c:?}");
        assert!(
            close(c.usd_per_1k_tokens.unwrap(), (5.398e-4 + 0.225) * 2.0),
            "{c:?}"
        );
        // The default price is 0: the record's egress is there, and nothing.
        let free = prices().price(&request(), None, 1 << 40).cost_usd.egress;
        assert!(free.abs() < f64::MIN_POSITIVE, "{free}");
    }

    #[test]
    fn one_kwh_costs_the_tariff_times_pue() {
        let (usd, g) = prices().energy(MicroJoules(3_600_000_000_000));
        assert!(close(usd, 0.18) && close(g, 600.0));
    }

    #[test]
    fn unknown_or_zero_tokens_give_no_per_token_price() {
        let p = prices();
        assert_eq!(p.price(&request(), None, 0).usd_per_1k_tokens, None);
        assert_eq!(p.price(&request(), Some(0), 0).usd_per_1k_tokens, None);
        let json = serde_json::to_value(p.price(&request(), None, 0)).unwrap();
        assert!(json.get("usd_per_1k_tokens").is_none());
        assert!(json["cost_usd"]["total"].is_f64());
    }

    #[test]
    fn prices_from_rules_pick_the_gpu_model() {
        let rules = Rules::from_sources([(
            "t.toml",
            "[energy]\nprice_usd_per_kwh = 0.2\npue = 1.2\ncarbon_g_per_kwh = 100\n\
             [gpu.h100]\npurchase_usd = 30000\nyears = 3\nutilization = 0.5\n",
        )])
        .unwrap();
        let p = Prices::from_rules(&rules, Some("NVIDIA H100 80GB HBM3"));
        // $30000 ÷ (3 × 8760 h × 0.5) = $2.2831…/h.
        assert!(close(p.gpu_usd_per_hour, 30_000.0 / 13_140.0), "{p:?}");
        assert!(close(p.usd_per_kwh, 0.2) && close(p.pue, 1.2));
        let none = Prices::from_rules(&rules, None);
        assert!(close(
            none.gpu_usd_per_hour,
            rules.gpu["default"].usd_per_hour()
        ));
    }
}
