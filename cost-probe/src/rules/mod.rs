//! Rules: prices, attribution settings, tags, budgets, anomalies and discovery targets, from
//! TOML.
//!
//! The built-in `rules/default.toml` (compiled in) is applied first, then every `*.toml` of the
//! rules directory in file-name order. Merging: scalar keys of `[energy]`, `[cpu]`,
//! `[attribution]` and `[paths]` override one by one; a `[gpu.X]` table replaces the earlier
//! `[gpu.X]` as a whole (its pricing fields are alternatives, so mixing them across files would
//! be ambiguous); `[[tag]]`, `[[paths.rewrite]]`, `[[budget]]`, `[[anomaly]]` and `[[target]]`
//! entries append. Unknown keys are errors, so a typo never silently leaves a default in place.

pub mod schema;
mod tagger;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::schema::{
    AnomalyMetric, GpuRule, IdleModeFile, IdlePowerFile, Period, Rewrite, RulesFile, SplitFile,
    TagRule, TargetRule,
};
pub use self::tagger::{PathNormalizer, RequestInfo, Tagger};
use crate::attribution::{IdleMode, IdlePower, LedgerConfig, SplitMode};

/// The built-in defaults, documented line by line in the repository's `rules/default.toml`.
pub const DEFAULT_RULES: &str = include_str!("../../../rules/default.toml");
const DEFAULT_NAME: &str = "<built-in>/rules/default.toml";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RulesError {
    fn at(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        Self::At {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnergyRules {
    pub price_usd_per_kwh: f64,
    pub pue: f64,
    pub carbon_g_per_kwh: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuRules {
    /// Per logical CPU (the unit of the CPU domain's `devices`).
    pub usd_per_core_hour: f64,
    pub idle_watts_per_core: f64,
    pub max_watts_per_core: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkRules {
    /// Per 10^9 bytes of response (`bytes.out`), not per GiB.
    pub egress_usd_per_gb: f64,
}

#[derive(Clone, Debug)]
pub struct PathRules {
    pub placeholder: String,
    pub max_segments: usize,
    pub rewrite: Vec<Rewrite>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub name: String,
    pub period: Period,
    pub amount_usd: f64,
    pub alert_at: Vec<f64>,
    /// Only requests carrying all these tags count; empty = all requests.
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub name: String,
    pub metric: AnomalyMetric,
    pub factor: f64,
    pub window: Duration,
    pub tags: BTreeMap<String, String>,
}

/// The merged, validated rules.
#[derive(Clone, Debug)]
pub struct Rules {
    pub energy: EnergyRules,
    /// Keyed by model substring; `default` prices any GPU no other key matches.
    pub gpu: BTreeMap<String, GpuRule>,
    pub cpu: CpuRules,
    pub network: NetworkRules,
    pub attribution: LedgerConfig,
    pub paths: PathRules,
    pub tags: Vec<TagRule>,
    pub budgets: Vec<Budget>,
    pub anomalies: Vec<Anomaly>,
    pub targets: Vec<TargetRule>,
    /// Files merged, in order (the built-in first).
    pub sources: Vec<String>,
}

impl Rules {
    /// The built-in defaults alone.
    pub fn builtin() -> Result<Self, RulesError> {
        Self::from_sources(std::iter::empty::<(&str, &str)>())
    }

    /// The defaults overlaid with every `*.toml` in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Self, RulesError> {
        let io = |source| RulesError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        files.sort();
        let mut texts = Vec::with_capacity(files.len());
        for path in files {
            // A dangling or looping symlink is an error, not a file quietly left out; a
            // directory (or a link to one) named *.toml is not a rules file.
            match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => continue,
                Ok(_) => {}
                Err(source) => {
                    return Err(match std::fs::read_link(&path) {
                        Ok(target) => RulesError::File {
                            file: path.display().to_string(),
                            message: format!(
                                "cannot follow symlink to {}: {source}",
                                target.display()
                            ),
                        },
                        Err(_) => RulesError::Io { path, source },
                    });
                }
            }
            let text = std::fs::read_to_string(&path).map_err(|source| RulesError::Io {
                path: path.clone(),
                source,
            })?;
            texts.push((path.display().to_string(), text));
        }
        Self::from_sources(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }

    /// The defaults overlaid with `(file name, text)` sources in the order given. Pure.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RulesError> {
        let mut m = Merger::default();
        m.add(DEFAULT_NAME, DEFAULT_RULES)?;
        for (name, text) in sources {
            m.add(name, text)?;
        }
        m.finish()
    }

    /// The GPU rule for an NVML model name such as `"NVIDIA H100 80GB HBM3"`: the longest key
    /// found in it (case-insensitive), else `default`.
    #[must_use]
    pub fn gpu_for(&self, model: &str) -> (&str, &GpuRule) {
        let model = model.to_ascii_lowercase();
        self.gpu
            .iter()
            .filter(|(k, _)| *k != "default" && model.contains(&k.to_ascii_lowercase()))
            .max_by_key(|(k, _)| k.len())
            .or_else(|| self.gpu.get_key_value("default"))
            .map(|(k, r)| (k.as_str(), r))
            .expect("merge guarantees a default GPU rule")
    }

    #[must_use]
    pub fn ledger_config(&self) -> LedgerConfig {
        self.attribution.clone()
    }

    #[must_use]
    pub fn tagger(&self) -> Tagger {
        Tagger::new(self)
    }
}

/// Applies files one after another, remembering where each named item came from so duplicates
/// can point at both.
#[derive(Default)]
struct Merger {
    energy: (Option<f64>, Option<f64>, Option<f64>),
    cpu: (Option<f64>, Option<f64>, Option<f64>),
    cpu_file: String,
    egress_usd_per_gb: Option<f64>,
    attribution: LedgerConfig,
    placeholder: Option<String>,
    max_segments: Option<usize>,
    rewrite: Vec<Rewrite>,
    gpu: BTreeMap<String, GpuRule>,
    tags: Vec<TagRule>,
    budgets: Vec<Budget>,
    anomalies: Vec<Anomaly>,
    targets: Vec<TargetRule>,
    names: BTreeMap<(&'static str, String), String>,
    sources: Vec<String>,
}

impl Merger {
    fn add(&mut self, file: &str, text: &str) -> Result<(), RulesError> {
        let parsed: RulesFile = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => RulesError::at(file, text, span.start, e.message()),
            None => RulesError::File {
                file: file.to_owned(),
                message: e.message().to_owned(),
            },
        })?;
        self.sources.push(file.to_owned());
        if let Some(e) = parsed.energy {
            set(&mut self.energy.0, e.price_usd_per_kwh.map(|v| v.0));
            set(&mut self.energy.1, e.pue.map(|v| v.0));
            set(&mut self.energy.2, e.carbon_g_per_kwh.map(|v| v.0));
        }
        if let Some(c) = parsed.cpu {
            set(&mut self.cpu.0, c.usd_per_core_hour.map(|v| v.0));
            set(&mut self.cpu.1, c.idle_watts_per_core.map(|v| v.0));
            set(&mut self.cpu.2, c.max_watts_per_core.map(|v| v.0));
            file.clone_into(&mut self.cpu_file);
        }
        if let Some(n) = parsed.network {
            set(
                &mut self.egress_usd_per_gb,
                n.egress_usd_per_gb.map(|v| v.0),
            );
        }
        if let Some(a) = parsed.attribution {
            let c = &mut self.attribution;
            if let Some(v) = a.idle {
                c.idle = match v {
                    IdleModeFile::Explicit => IdleMode::Explicit,
                    IdleModeFile::Amortize => IdleMode::Amortize,
                };
            }
            if let Some(v) = a.split {
                c.split = match v {
                    SplitFile::Time => SplitMode::Time,
                    SplitFile::Tokens => SplitMode::Tokens,
                };
            }
            if let Some(v) = a.idle_power {
                c.idle_power = match v {
                    IdlePowerFile::Learned => IdlePower::Learned,
                    IdlePowerFile::Watts(w) => IdlePower::Watts(w),
                };
            }
            if let Some(v) = a.idle_percentile {
                c.idle_percentile = v.0;
            }
            if let Some(v) = a.idle_window {
                c.idle_window = v.0;
            }
            if let Some(v) = a.max_open_spans {
                c.max_open_spans = v.0;
            }
        }
        if let Some(p) = parsed.paths {
            set(&mut self.placeholder, p.placeholder);
            set(&mut self.max_segments, p.max_segments.map(|v| v.0));
            self.rewrite.extend(p.rewrite);
        }
        self.gpu.extend(parsed.gpu.unwrap_or_default());
        self.tags.extend(parsed.tag);
        self.targets.extend(parsed.target);
        for b in parsed.budget {
            self.unique("budget", file, text, &b.name)?;
            self.budgets.push(Budget {
                name: b.name.into_inner(),
                period: b.period,
                amount_usd: b.amount_usd.0,
                alert_at: b.alert_at.0,
                tags: b.tags.into_iter().map(|(k, v)| (k.0, v)).collect(),
            });
        }
        for a in parsed.anomaly {
            self.unique("anomaly", file, text, &a.name)?;
            self.anomalies.push(Anomaly {
                name: a.name.into_inner(),
                metric: a.metric,
                factor: a.factor.0,
                window: a.window.0,
                tags: a.tags.into_iter().map(|(k, v)| (k.0, v)).collect(),
            });
        }
        Ok(())
    }

    fn unique(
        &mut self,
        kind: &'static str,
        file: &str,
        text: &str,
        name: &toml::Spanned<String>,
    ) -> Result<(), RulesError> {
        let (line, column) = line_col(text, name.span().start);
        let here = format!("{file}:{line}:{column}");
        if let Some(first) = self.names.get(&(kind, name.get_ref().clone())) {
            return Err(RulesError::at(
                file,
                text,
                name.span().start,
                format!(
                    "duplicate {kind} name \"{}\" (first at {first})",
                    name.get_ref()
                ),
            ));
        }
        self.names.insert((kind, name.get_ref().clone()), here);
        Ok(())
    }

    fn finish(self) -> Result<Rules, RulesError> {
        let missing = |what: &str| RulesError::File {
            file: DEFAULT_NAME.to_owned(),
            message: format!("built-in rules lack {what}"),
        };
        let (Some(price), Some(pue), Some(carbon)) = self.energy else {
            return Err(missing("[energy]"));
        };
        let (Some(core_hour), Some(idle_w), Some(max_w)) = self.cpu else {
            return Err(missing("[cpu]"));
        };
        if idle_w > max_w {
            return Err(RulesError::File {
                file: self.cpu_file,
                message: format!(
                    "[cpu] idle_watts_per_core ({idle_w}) exceeds max_watts_per_core ({max_w})"
                ),
            });
        }
        if !self.gpu.contains_key("default") {
            return Err(missing("[gpu.default]"));
        }
        Ok(Rules {
            energy: EnergyRules {
                price_usd_per_kwh: price,
                pue,
                carbon_g_per_kwh: carbon,
            },
            gpu: self.gpu,
            cpu: CpuRules {
                usd_per_core_hour: core_hour,
                idle_watts_per_core: idle_w,
                max_watts_per_core: max_w,
            },
            network: NetworkRules {
                egress_usd_per_gb: self.egress_usd_per_gb.unwrap_or(0.0),
            },
            attribution: self.attribution,
            paths: PathRules {
                placeholder: self.placeholder.unwrap_or_else(|| ":id".to_owned()),
                max_segments: self.max_segments.unwrap_or(8),
                rewrite: self.rewrite,
            },
            tags: self.tags,
            budgets: self.budgets,
            anomalies: self.anomalies,
            targets: self.targets,
            sources: self.sources,
        })
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}
