//! The OTLP exporter's configuration: `--otlp-endpoint` and the standard `OTEL_*` variables
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), validated once, at the edge.
use std::time::Duration;

use ureq::http::Uri;

/// A bad value, said in one line naming the variable or flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

fn err(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        message: message.into(),
    }
}

/// `--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL signal paths are added to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint(String);

impl std::str::FromStr for OtlpEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_url(s).map(|()| Self(s.trim().to_owned()))
    }
}

impl OtlpEndpoint {
    /// The base URL with a signal's path (`v1/traces`) added, as the spec says: one `/` between.
    #[must_use]
    pub fn signal(&self, path: &str) -> String {
        format!("{}/{path}", self.0.trim_end_matches('/'))
    }
}

/// OTLP/HTTP over plain `http://` only: this build links no TLS stack (the usual deployment sends
/// to a collector on the node, which adds TLS and auth for the hop that leaves it).
fn check_url(s: &str) -> Result<(), String> {
    let s = s.trim();
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{s:?}: https is not supported by this build; send to a local collector over http"
            ));
        }
        _ => return Err(format!("{s:?}: expected http://HOST:PORT")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?}: no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?}: a query string is not allowed"));
    }
    Ok(())
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

/// Everything the exporter needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Full URL spans are posted to; `None`: no traces.
    pub traces: Option<String>,
    /// Full URL metrics are posted to; `None`: no metrics.
    pub metrics: Option<String>,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`; else `service.name` from the resource attributes; else each traced
    /// process's executable name.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, in order.
    pub resource: Vec<(String, String)>,
    pub compression: Compression,
    /// One export request's time limit (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Spans held between the consumer thread and the exporter (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue: usize,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub batch: usize,
    /// The longest a span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// How often metrics are sent (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub metric_interval: Duration,
}

impl OtlpConfig {
    /// From the flag and the environment (`env` looks a variable up; empty counts as unset).
    /// `Ok(None)`: no endpoint anywhere, no exporter.
    pub fn from_env(
        flag: Option<&OtlpEndpoint>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let base = match (flag, var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(v)) => Some(
                v.parse::<OtlpEndpoint>()
                    .map_err(|e| err("OTEL_EXPORTER_OTLP_ENDPOINT", e))?,
            ),
            (None, None) => None,
        };
        let signal = |name: &'static str, path: &str| -> Result<Option<String>, ConfigError> {
            match var(name) {
                Some(v) => check_url(&v)
                    .map(|()| Some(v.trim().to_owned()))
                    .map_err(|e| err(name, e)),
                None => Ok(base.as_ref().map(|b| b.signal(path))),
            }
        };
        let traces = signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "v1/traces")?;
        let metrics = signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "v1/metrics")?;
        if traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        let headers = match var("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(v) => pairs(&v).map_err(|e| err("OTEL_EXPORTER_OTLP_HEADERS", e))?,
            None => Vec::new(),
        };
        for (k, v) in &headers {
            ureq::http::HeaderName::try_from(k.as_str()).map_err(|_| {
                err(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    format!("{k:?} is not a header name"),
                )
            })?;
            ureq::http::HeaderValue::try_from(v.as_str()).map_err(|_| {
                err(
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    format!("the value of {k} is not a header value"),
                )
            })?;
        }
        let resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => pairs(&v).map_err(|e| err("OTEL_RESOURCE_ATTRIBUTES", e))?,
            None => Vec::new(),
        };
        let compression = match var("OTEL_EXPORTER_OTLP_COMPRESSION")
            .as_deref()
            .map(str::trim)
        {
            None | Some("gzip") => Compression::Gzip,
            Some("none") => Compression::None,
            Some(v) => {
                return Err(err(
                    "OTEL_EXPORTER_OTLP_COMPRESSION",
                    format!("{v:?}: expected gzip or none"),
                ));
            }
        };
        let number = |name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>| {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        err(
                            name,
                            format!(
                                "{v:?}: expected a whole number from {} to {}",
                                range.start(),
                                range.end()
                            ),
                        )
                    }),
            }
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1..=1 << 20)?;
        let batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1..=1 << 16)?;
        Ok(Some(Self {
            traces,
            metrics,
            headers,
            service_name: var("OTEL_SERVICE_NAME").map(|s| s.trim().to_owned()),
            resource,
            compression,
            timeout: Duration::from_millis(number(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                10_000,
                1..=600_000,
            )?),
            queue: queue as usize,
            // The spec: a batch larger than the queue is the queue.
            batch: batch.min(queue) as usize,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000, 1..=600_000)?),
            metric_interval: Duration::from_millis(number(
                "OTEL_METRIC_EXPORT_INTERVAL",
                60_000,
                100..=3_600_000,
            )?),
        }))
    }
}

/// `k=v,k2=v2` (W3C Baggage-like, as `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` are written): keys and values trimmed, then percent-decoded.
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{item:?}: expected key=value"));
        };
        let decode = |t: &str| {
            percent_encoding::percent_decode_str(t.trim())
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| format!("{item:?}: not UTF-8 once percent-decoded"))
        };
        let key = decode(k)?;
        if key.is_empty() {
            return Err(format!("{item:?}: empty key"));
        }
        out.push((key, decode(v)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(vars: &[(&str, &str)], flag: Option<&str>) -> Result<Option<OtlpConfig>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let flag = flag.map(|f| f.parse::<OtlpEndpoint>().unwrap());
        OtlpConfig::from_env(flag.as_ref(), |k| map.get(k).cloned())
    }

    #[test]
    fn no_endpoint_no_exporter() {
        assert_eq!(cfg(&[("OTEL_SERVICE_NAME", "x")], None), Ok(None));
    }

    #[test]
    fn signal_paths_follow_the_base_and_per_signal_variables_win() {
        let c = cfg(&[], Some("http://collector:4318/")).unwrap().unwrap();
        assert_eq!(c.traces.as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(
            c.metrics.as_deref(),
            Some("http://collector:4318/v1/metrics")
        );
        let c = cfg(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1/base"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/m"),
            ],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.traces.as_deref(), Some("http://a:1/base/v1/traces"));
        assert_eq!(c.metrics.as_deref(), Some("http://b:2/m"));
        let c = cfg(
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x")],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.traces.as_deref(), c.metrics),
            (Some("http://t:1/x"), None)
        );
    }

    #[test]
    fn headers_and_resource_attributes_are_percent_decoded() {
        let c = cfg(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x-team = ml "),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,k8s.cluster.name=c%2C1",
                ),
            ],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.headers,
            [
                ("api-key".into(), "a b".into()),
                ("x-team".into(), "ml".into())
            ]
        );
        assert_eq!(c.resource[1], ("k8s.cluster.name".into(), "c,1".into()));
        assert_eq!(c.compression, Compression::Gzip);
        assert_eq!((c.queue, c.batch), (2048, 512));
    }

    #[test]
    fn malformed_values_name_their_variable_in_one_line() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1");
        for (vars, name) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a:1")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_HEADERS", "a b=c")],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                vec![base, ("OTEL_RESOURCE_ATTRIBUTES", "=x")],
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
            (
                vec![base, ("OTEL_RESOURCE_ATTRIBUTES", "a=%ff")],
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ),
            (
                vec![base, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
                "OTEL_BSP_MAX_QUEUE_SIZE",
            ),
            (
                vec![base, ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5")],
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
        ] {
            let e = cfg(&vars, None).unwrap_err();
            assert_eq!(e.name, name, "{vars:?}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!("http://".parse::<OtlpEndpoint>().is_err());
        assert!("http://a:1/x?y=1".parse::<OtlpEndpoint>().is_err());
    }
}
