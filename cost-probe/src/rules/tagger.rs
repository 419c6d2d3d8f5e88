//! Tags for a request from `[[tag]]` rules, and bounded-cardinality path labels.

use std::collections::BTreeMap;

use super::Rules;
use super::schema::{Rewrite, TagRule};

/// What the tag rules can look at. Paths may carry a query string; it is ignored.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub port: Option<u16>,
    pub model: Option<&'a str>,
    pub comm: Option<&'a str>,
    pub cmdline: Option<&'a str>,
}

/// Applies every matching `[[tag]]` rule in order; a later rule's value for a key wins.
///
/// A value that is exactly `$path`, `$method`, `$model` or `$comm` takes the request's own value
/// (the path normalized), so one rule can label by endpoint without listing endpoints.
#[derive(Clone, Debug)]
pub struct Tagger {
    rules: Vec<TagRule>,
    paths: PathNormalizer,
}

impl Tagger {
    #[must_use]
    pub fn new(rules: &Rules) -> Self {
        Self {
            rules: rules.tags.clone(),
            paths: PathNormalizer::new(rules),
        }
    }

    #[must_use]
    pub fn normalizer(&self) -> &PathNormalizer {
        &self.paths
    }

    #[must_use]
    pub fn tags(&self, req: &RequestInfo<'_>) -> BTreeMap<String, String> {
        let path = req.path.map(strip_query);
        let mut out = BTreeMap::new();
        for rule in self.rules.iter().filter(|r| matches(r, req, path)) {
            for (k, v) in &rule.set {
                let value = match v.as_str() {
                    "$path" => path.map(|p| self.paths.normalize(p)),
                    "$method" => req.method.map(str::to_owned),
                    "$model" => req.model.map(str::to_owned),
                    "$comm" => req.comm.map(str::to_owned),
                    _ => Some(v.clone()),
                };
                // Unknown values are omitted, never invented.
                if let Some(value) = value {
                    out.insert(k.clone(), value);
                }
            }
        }
        out
    }
}

fn matches(rule: &TagRule, req: &RequestInfo<'_>, path: Option<&str>) -> bool {
    let re = |pat: &Option<regex::Regex>, v: Option<&str>| {
        pat.as_ref()
            .is_none_or(|p| v.is_some_and(|v| p.is_match(v)))
    };
    re(&rule.path, path)
        && re(&rule.model, req.model)
        && re(&rule.comm, req.comm)
        && re(&rule.cmdline, req.cmdline)
        && rule
            .method
            .as_ref()
            .is_none_or(|m| req.method.is_some_and(|v| v.eq_ignore_ascii_case(m)))
        && rule.port.is_none_or(|p| req.port == Some(p))
}

fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Turns request paths into metric labels with bounded cardinality: `[[paths.rewrite]]` rules
/// first, then every id-like segment becomes the placeholder and paths deeper than
/// `max_segments` are cut with `/*`.
#[derive(Clone, Debug)]
pub struct PathNormalizer {
    placeholder: String,
    max_segments: usize,
    rewrite: Vec<Rewrite>,
}

impl PathNormalizer {
    #[must_use]
    pub fn new(rules: &Rules) -> Self {
        Self {
            placeholder: rules.paths.placeholder.clone(),
            max_segments: rules.paths.max_segments,
            rewrite: rules.paths.rewrite.clone(),
        }
    }

    #[must_use]
    pub fn normalize(&self, path: &str) -> String {
        let path = strip_query(path);
        let rewritten = self
            .rewrite
            .iter()
            .find(|r| r.pattern.0.is_match(path))
            .map(|r| r.pattern.0.replace(path, r.to.as_str()).into_owned());
        let path = rewritten.as_deref().unwrap_or(path);
        let mut out = String::with_capacity(path.len());
        for (i, seg) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
            if i == self.max_segments {
                out.push_str("/*");
                break;
            }
            out.push('/');
            out.push_str(if id_like(seg) { &self.placeholder } else { seg });
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Numbers, UUIDs, long hex strings, and long tokens with digits in them (request ids, hashes):
/// the segments whose values are unbounded. A leading `:` marks a placeholder a rewrite put in.
fn id_like(seg: &str) -> bool {
    if seg.starts_with(':') {
        return false;
    }
    let all = |f: fn(char) -> bool| seg.chars().all(f);
    let has_digit = seg.chars().any(|c| c.is_ascii_digit());
    all(|c| c.is_ascii_digit())
        || is_uuid(seg)
        || (seg.len() >= 16 && all(|c| c.is_ascii_hexdigit()))
        || (seg.len() >= 16 && has_digit)
        || seg.len() > 64
}

fn is_uuid(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
