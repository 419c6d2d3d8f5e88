//! What one rules file may contain. Every value is validated while it is deserialized, so a bad
//! value fails with toml's span and the error names its file, line and column.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

/// A number in an error message: plain when it reads well, else in exponent form (`1e308`,
/// not 309 digits).
fn num(v: f64) -> String {
    if v == 0.0 || (1e-6..1e9).contains(&v.abs()) {
        v.to_string()
    } else {
        format!("{v:e}")
    }
}

/// Declares a number that is validated while it is deserialized: finite, at least (or, with
/// `above`, more than) `lo` and at most `hi`. Every bound sits past anything real hardware or
/// a real tariff reaches, so a typo (or `1e308`) fails at load instead of saturating the
/// arithmetic downstream.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $what:literal, $lo:literal ..= $hi:literal $(, $unit:literal)?) => {
        bounded!(@ $(#[$doc])* $name, $what, $lo, false, $hi, concat!("" $(, " ", $unit)?));
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, above $lo:literal ..= $hi:literal $(, $unit:literal)?) => {
        bounded!(@ $(#[$doc])* $name, $what, $lo, true, $hi, concat!("" $(, " ", $unit)?));
    };
    (@ $(#[$doc:meta])* $name:ident, $what:literal, $lo:literal, $above:literal, $hi:literal, $unit:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
        #[serde(try_from = "f64")]
        pub struct $name(pub f64);

        impl $name {
            pub const MIN: f64 = $lo;
            pub const MAX: f64 = $hi;
        }

        impl TryFrom<f64> for $name {
            type Error = String;
            fn try_from(v: f64) -> Result<Self, String> {
                let low_ok = if $above { v > $lo } else { v >= $lo };
                if v.is_finite() && low_ok && v <= $hi {
                    Ok(Self(v))
                } else {
                    let (from, to) = if $above { ("> ", " and ≤") } else { ("between ", " and") };
                    Err(format!(
                        "{} must be {from}{}{to} {}{}, got {}",
                        $what,
                        num($lo),
                        num($hi),
                        $unit,
                        num(v)
                    ))
                }
            }
        }
    };
}

bounded!(
    /// `price_usd_per_kwh`: retail and industrial tariffs are cents per kWh; even scarcity
    /// pricing caps (ERCOT's $5/kWh) stay below this.
    UsdPerKwh, "an electricity price", 0.0 ..= 10.0, "$/kWh"
);
bounded!(
    /// `carbon_g_per_kwh`: lignite, the dirtiest generation, is about 1,100–1,200 g/kWh.
    CarbonPerKwh, "a carbon intensity", 0.0 ..= 2000.0, "g/kWh"
);
bounded!(
    /// `usd_per_core_hour`: cloud vCPUs cost a few cents an hour.
    UsdPerCoreHour, "a price per core-hour", 0.0 ..= 10.0, "$"
);
bounded!(
    /// `idle_watts_per_core`, `max_watts_per_core`: a whole server CPU package draws well under
    /// 1,000 W, let alone one logical CPU.
    WattsPerCore, "power per core", 0.0 ..= 1000.0, "W"
);
bounded!(
    /// `[gpu.X] usd_per_hour` (and what `purchase_usd` amortizes to): GPU-hours cost a few
    /// dollars.
    UsdPerGpuHour, "a price per GPU-hour", 0.0 ..= 1000.0, "$"
);
bounded!(
    /// `[gpu.X] purchase_usd`, per GPU: a data-centre GPU costs tens of thousands of dollars.
    PurchaseUsd, "a GPU's purchase price", 0.0 ..= 10_000_000.0, "$"
);
bounded!(
    /// `[gpu.X] years` of service the purchase is spread over.
    Years, "years of service", above 0.0 ..= 50.0
);
bounded!(
    /// `[gpu.X] idle_watts`: the largest GPUs draw about 1,200 W at full load.
    GpuWatts, "a GPU's idle power", 0.0 ..= 2000.0, "W"
);
bounded!(
    /// `[attribution] idle_power` in watts, for a whole device.
    DeviceWatts, "idle_power", 0.0 ..= 10_000.0, "W"
);
bounded!(
    /// `[network] egress_usd_per_gb`: internet egress list prices are cents per GB.
    UsdPerGb, "an egress price", 0.0 ..= 10.0, "$/GB"
);
bounded!(
    /// `[[budget]] amount_usd`.
    BudgetUsd, "a budget", above 0.0 ..= 1e9, "$"
);

/// Power usage effectiveness: facility energy ÷ IT energy, so never below 1.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "f64")]
pub struct Pue(pub f64);

impl TryFrom<f64> for Pue {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (1.0..=5.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("pue must be between 1.0 and 5.0, got {v}"))
        }
    }
}

/// A fraction in (0, 1].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(try_from = "f64")]
pub struct Fraction(pub f64);

impl TryFrom<f64> for Fraction {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v > 0.0 && v <= 1.0 {
            Ok(Self(v))
        } else {
            Err(format!("expected a fraction in (0, 1], got {}", num(v)))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    pub energy: Option<EnergyFile>,
    pub gpu: Option<BTreeMap<String, GpuRule>>,
    pub cpu: Option<CpuFile>,
    pub network: Option<NetworkFile>,
    pub attribution: Option<AttributionFile>,
    pub paths: Option<PathsFile>,
    #[serde(default)]
    pub tag: Vec<TagRule>,
    #[serde(default)]
    pub budget: Vec<BudgetFile>,
    #[serde(default)]
    pub anomaly: Vec<AnomalyFile>,
    #[serde(default)]
    pub target: Vec<TargetRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyFile {
    pub price_usd_per_kwh: Option<UsdPerKwh>,
    pub pue: Option<Pue>,
    pub carbon_g_per_kwh: Option<CarbonPerKwh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFile {
    pub usd_per_core_hour: Option<UsdPerCoreHour>,
    pub idle_watts_per_core: Option<WattsPerCore>,
    pub max_watts_per_core: Option<WattsPerCore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub egress_usd_per_gb: Option<UsdPerGb>,
}

/// How a GPU's hours are priced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GpuPricing {
    /// What you pay per GPU-hour: on-demand, reserved or spot.
    Hourly { usd_per_hour: f64 },
    /// Purchase price spread over `years` of service, of which a fraction `utilization` is used.
    Amortized {
        purchase_usd: f64,
        years: f64,
        utilization: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "GpuRaw")]
pub struct GpuRule {
    pub pricing: GpuPricing,
    pub idle_watts: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuRaw {
    usd_per_hour: Option<UsdPerGpuHour>,
    purchase_usd: Option<PurchaseUsd>,
    years: Option<Years>,
    utilization: Option<Fraction>,
    idle_watts: Option<GpuWatts>,
}

impl TryFrom<GpuRaw> for GpuRule {
    type Error = String;
    fn try_from(r: GpuRaw) -> Result<Self, String> {
        let pricing = match (r.usd_per_hour, r.purchase_usd, r.years) {
            (Some(h), None, None) if r.utilization.is_none() => {
                GpuPricing::Hourly { usd_per_hour: h.0 }
            }
            (None, Some(p), Some(y)) => GpuPricing::Amortized {
                purchase_usd: p.0,
                years: y.0,
                utilization: r.utilization.map_or(1.0, |u| u.0),
            },
            (None, Some(_), None) => return Err("purchase_usd needs years".into()),
            _ => {
                return Err(
                    "give either usd_per_hour, or purchase_usd + years (+ utilization)".into(),
                );
            }
        };
        let rule = Self {
            pricing,
            idle_watts: r.idle_watts.map(|w| w.0),
        };
        let hourly = rule.usd_per_hour();
        if !hourly.is_finite() || hourly > UsdPerGpuHour::MAX {
            return Err(format!(
                "purchase_usd ÷ (years × 8760 × utilization) is {} $ per GPU-hour, above {} $",
                num(hourly),
                num(UsdPerGpuHour::MAX)
            ));
        }
        Ok(rule)
    }
}

impl GpuRule {
    /// What one GPU-hour costs.
    #[must_use]
    pub fn usd_per_hour(&self) -> f64 {
        match self.pricing {
            GpuPricing::Hourly { usd_per_hour } => usd_per_hour,
            GpuPricing::Amortized {
                purchase_usd,
                years,
                utilization,
            } => purchase_usd / (years * 365.0 * 24.0 * utilization),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleModeFile {
    Explicit,
    Amortize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitFile {
    Time,
    Tokens,
}

/// `"learned"` or a wattage.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "IdlePowerRaw")]
pub enum IdlePowerFile {
    Learned,
    Watts(f64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdlePowerRaw {
    Text(String),
    Number(f64),
}

impl TryFrom<IdlePowerRaw> for IdlePowerFile {
    type Error = String;
    fn try_from(r: IdlePowerRaw) -> Result<Self, String> {
        match r {
            IdlePowerRaw::Text(t) if t == "learned" => Ok(Self::Learned),
            IdlePowerRaw::Text(t) => Err(format!(
                "idle_power must be \"learned\" or watts, got \"{t}\""
            )),
            IdlePowerRaw::Number(w) => DeviceWatts::try_from(w).map(|w| Self::Watts(w.0)),
        }
    }
}

/// An integer percentile, 0–100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Percent(pub u8);

impl TryFrom<i64> for Percent {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        u8::try_from(v)
            .ok()
            .filter(|p| *p <= 100)
            .map(Self)
            .ok_or_else(|| format!("expected a percentile 0–100, got {v}"))
    }
}

/// A count from 1 to `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Count<const MAX: usize>(pub usize);

impl<const MAX: usize> TryFrom<i64> for Count<MAX> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        usize::try_from(v)
            .ok()
            .filter(|n| (1..=MAX).contains(n))
            .map(Self)
            .ok_or_else(|| format!("expected a count from 1 to {MAX}, got {v}"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionFile {
    pub idle: Option<IdleModeFile>,
    pub split: Option<SplitFile>,
    pub idle_power: Option<IdlePowerFile>,
    pub idle_percentile: Option<Percent>,
    /// Idle samples kept (a day of 100 ms intervals is 864,000).
    pub idle_window: Option<Count<1_000_000>>,
    pub max_open_spans: Option<Count<10_000_000>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsFile {
    pub placeholder: Option<String>,
    pub max_segments: Option<Count<64>>,
    #[serde(default)]
    pub rewrite: Vec<Rewrite>,
}

/// regex's errors draw a caret diagram over several lines; its last line says what is wrong, and
/// the rules error already points at the value.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// A regex compiled when the rules load.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(pub Regex);

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Regex::new(&s)
            .map(Self)
            .map_err(|e| format!("invalid regex: {}", one_line(&e)))
    }
}

/// A shell-style glob (`*` any run of characters, `?` one), compiled to an anchored regex.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob(pub Regex);

impl TryFrom<String> for Glob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty glob".into());
        }
        let mut re = String::from("^");
        let mut lit = [0u8; 4];
        for c in s.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(c.encode_utf8(&mut lit))),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(Self)
            .map_err(|e| format!("invalid glob: {}", one_line(&e)))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(rename = "match")]
    pub pattern: Pattern,
    /// Replacement; `$1`-style groups allowed.
    pub to: String,
}

/// Tag keys become Prometheus label names, so they must be valid ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct LabelName(pub String);

impl TryFrom<String> for LabelName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut chars = s.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with("__");
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "tag name \"{s}\" is not a valid label name ([A-Za-z_][A-Za-z0-9_]*)"
            ))
        }
    }
}

/// One `[[tag]]` rule: every matcher given must match; then `set` applies.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "TagRaw")]
pub struct TagRule {
    pub path: Option<Regex>,
    pub method: Option<String>,
    pub port: Option<u16>,
    pub model: Option<Regex>,
    pub comm: Option<Regex>,
    pub cmdline: Option<Regex>,
    pub set: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagRaw {
    path: Option<Glob>,
    path_regex: Option<Pattern>,
    method: Option<String>,
    port: Option<u16>,
    model: Option<Glob>,
    comm: Option<Glob>,
    cmdline: Option<Pattern>,
    set: BTreeMap<LabelName, String>,
}

impl TryFrom<TagRaw> for TagRule {
    type Error = String;
    fn try_from(r: TagRaw) -> Result<Self, String> {
        if r.path.is_some() && r.path_regex.is_some() {
            return Err("give path (glob) or path_regex, not both".into());
        }
        if r.set.is_empty() {
            return Err("a tag rule needs at least one entry in `set`".into());
        }
        Ok(Self {
            path: r.path.map(|g| g.0).or(r.path_regex.map(|p| p.0)),
            method: r.method.map(|m| m.to_ascii_uppercase()),
            port: r.port,
            model: r.model.map(|g| g.0),
            comm: r.comm.map(|g| g.0),
            cmdline: r.cmdline.map(|p| p.0),
            set: r.set.into_iter().map(|(k, v)| (k.0, v)).collect(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// Budget alert thresholds: fractions of the amount, strictly increasing, each in (0, 10].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "Vec<f64>")]
pub struct Thresholds(pub Vec<f64>);

impl TryFrom<Vec<f64>> for Thresholds {
    type Error = String;
    fn try_from(v: Vec<f64>) -> Result<Self, String> {
        if v.is_empty() {
            return Err("alert_at needs at least one threshold".into());
        }
        if v.iter().any(|t| !(*t > 0.0 && *t <= 10.0)) {
            return Err("alert_at thresholds must be in (0, 10]".into());
        }
        if v.windows(2).any(|w| w[0] >= w[1]) {
            return Err("alert_at thresholds must be strictly increasing".into());
        }
        Ok(Self(v))
    }
}

fn default_alert_at() -> Thresholds {
    Thresholds(vec![0.7, 0.9, 1.0])
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    pub name: Spanned<String>,
    pub period: Period,
    pub amount_usd: BudgetUsd,
    #[serde(default = "default_alert_at")]
    pub alert_at: Thresholds,
    #[serde(default)]
    pub tags: BTreeMap<LabelName, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyMetric {
    CostPerRequest,
    EnergyPerRequest,
}

/// The longest anomaly window.
const MAX_WINDOW: Duration = Duration::from_hours(366 * 24);

/// A `humantime` duration such as `"1h"` or `"30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Window(pub Duration);

impl TryFrom<String> for Window {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match humantime::parse_duration(&s) {
            Ok(d) if d > MAX_WINDOW => Err(format!("window \"{s}\" is longer than 366 days")),
            Ok(d) if !d.is_zero() => Ok(Self(d)),
            Ok(_) => Err("window must be longer than zero".into()),
            Err(e) => Err(format!("invalid window \"{s}\": {e}")),
        }
    }
}

/// An anomaly factor: how many times the baseline counts as anomalous, so above 1 (and at most
/// 1000).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Factor(pub f64);

impl TryFrom<f64> for Factor {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && v > 1.0 && v <= 1000.0 {
            Ok(Self(v))
        } else {
            Err(format!("factor must be > 1 and ≤ 1000, got {}", num(v)))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyFile {
    pub name: Spanned<String>,
    pub metric: AnomalyMetric,
    pub factor: Factor,
    pub window: Window,
    #[serde(default)]
    pub tags: BTreeMap<LabelName, String>,
}

/// One `[[target]]` discovery rule: a process matches if every matcher given matches.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "TargetRaw")]
pub struct TargetRule {
    pub name: String,
    pub comm: Option<Regex>,
    pub cmdline: Option<Regex>,
    pub port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRaw {
    name: String,
    comm: Option<Glob>,
    cmdline: Option<Pattern>,
    port: Option<u16>,
}

impl TryFrom<TargetRaw> for TargetRule {
    type Error = String;
    fn try_from(r: TargetRaw) -> Result<Self, String> {
        if r.comm.is_none() && r.cmdline.is_none() && r.port.is_none() {
            return Err(format!(
                "target \"{}\" needs at least one of comm, cmdline, port",
                r.name
            ));
        }
        Ok(Self {
            name: r.name,
            comm: r.comm.map(|g| g.0),
            cmdline: r.cmdline.map(|p| p.0),
            port: r.port,
        })
    }
}
