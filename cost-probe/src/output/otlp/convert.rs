//! [`SpanData`] → OTLP `Span`, and each traced process's `Resource`. Runs on the exporter thread.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};

use super::{OtlpConfig, SpanData, semconv as sc};
use crate::spans::Protocol;

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

pub fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

pub fn i(v: impl TryInto<i64>) -> Value {
    Value::IntValue(v.try_into().unwrap_or(i64::MAX))
}

pub fn dbl(v: f64) -> Value {
    Value::DoubleValue(v)
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "cost-probe".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

/// Span and trace ids: `SplitMix64` over a seed from the kernel's random pool. Ids need to be
/// unique and unpredictable enough not to collide across agents, not secret.
pub struct Ids(u64);

impl Ids {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `seed.len()` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut v = u64::from_ne_bytes(seed);
        if n != 8 {
            // No entropy pool (very early boot): time and pid still differ between agents.
            v = super::unix_now() ^ (u64::from(std::process::id()) << 32);
        }
        Self(v)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).max(1)
    }

    /// A number in [0, 1), for jitter.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn span_id(&mut self) -> Vec<u8> {
        self.next().to_be_bytes().to_vec()
    }

    fn trace_id(&mut self) -> Vec<u8> {
        let mut v = self.next().to_be_bytes().to_vec();
        v.extend_from_slice(&self.next().to_be_bytes());
        v
    }
}

/// `Span.flags` bits 8 and 9: whether the parent is known to be remote, and that it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// W3C `sampled`.
const SAMPLED: u32 = 1;

pub fn span(d: &SpanData, ids: &mut Ids) -> Span {
    let (trace_id, parent, flags) = match d.trace_parent {
        Some(tp) => (
            tp.trace_id.to_vec(),
            tp.parent_id.to_vec(),
            u32::from(tp.flags) | HAS_IS_REMOTE | IS_REMOTE,
        ),
        None => (ids.trace_id(), Vec::new(), SAMPLED | HAS_IS_REMOTE),
    };
    let mut a = Vec::with_capacity(40);
    let is_http = d.protocol == Protocol::Http1;
    if let Some(m) = &d.method {
        a.push(kv(sc::HTTP_REQUEST_METHOD, s(m.as_str())));
    }
    if let Some(p) = &d.path {
        a.push(kv(sc::URL_PATH, s(p.as_str())));
    }
    if is_http {
        a.push(kv(sc::URL_SCHEME, s("http")));
    }
    if let Some(st) = d.status {
        a.push(kv(sc::HTTP_RESPONSE_STATUS_CODE, i(st)));
    }
    address(&mut a, d.local, sc::SERVER_ADDRESS, sc::SERVER_PORT);
    address(&mut a, d.peer, sc::CLIENT_ADDRESS, sc::CLIENT_PORT);
    a.push(kv(sc::NETWORK_TRANSPORT, s("tcp")));
    match d.protocol {
        Protocol::Http1 => {
            a.push(kv(sc::NETWORK_PROTOCOL_NAME, s("http")));
            a.push(kv(sc::NETWORK_PROTOCOL_VERSION, s("1.1")));
        }
        Protocol::Http2 => {
            a.push(kv(sc::NETWORK_PROTOCOL_NAME, s("http")));
            a.push(kv(sc::NETWORK_PROTOCOL_VERSION, s("2")));
        }
        Protocol::Tcp => {}
    }
    let operation = d.path.as_deref().and_then(sc::operation);
    if let Some(op) = operation {
        a.push(kv(sc::GEN_AI_OPERATION_NAME, s(op)));
    }
    if let Some(m) = &d.model {
        a.push(kv(sc::GEN_AI_RESPONSE_MODEL, s(m.as_str())));
    }
    if let Some(n) = d.usage.prompt {
        a.push(kv(sc::GEN_AI_INPUT_TOKENS, i(n)));
    }
    if let Some(n) = d.usage.completion {
        a.push(kv(sc::GEN_AI_OUTPUT_TOKENS, i(n)));
    }
    cost_probe_attributes(d, &mut a);
    let error = d.status.filter(|&c| c >= 500);
    if let Some(c) = error {
        a.push(kv(sc::ERROR_TYPE, s(c.to_string())));
    }
    let name = match (d.protocol, &d.method) {
        (_, Some(m)) => m.clone(),
        (Protocol::Http2, None) => "HTTP/2".to_owned(),
        _ => "TCP".to_owned(),
    };
    Span {
        trace_id,
        span_id: ids.span_id(),
        parent_span_id: parent,
        flags,
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: d.start,
        end_time_unix_nano: d.end.max(d.start),
        attributes: a,
        status: error.map(|_| Status {
            code: StatusCode::Error as i32,
            ..Status::default()
        }),
        ..Span::default()
    }
}

fn address(a: &mut Vec<KeyValue>, addr: Option<SocketAddr>, host: &str, port: &str) {
    if let Some(addr) = addr {
        a.push(kv(host, s(addr.ip().to_canonical().to_string())));
        a.push(kv(port, i(addr.port())));
    }
}

/// Everything only cost-probe knows, under `cost_probe.`.
fn cost_probe_attributes(d: &SpanData, a: &mut Vec<KeyValue>) {
    if let Some(e) = d.energy {
        a.push(kv("cost_probe.energy.total_j", dbl(e.total)));
        a.push(kv("cost_probe.energy.gpu_j", dbl(e.gpu)));
        a.push(kv("cost_probe.energy.cpu_j", dbl(e.cpu)));
        a.push(kv("cost_probe.energy.dram_j", dbl(e.dram)));
    }
    if let Some(c) = d.cost {
        a.push(kv("cost_probe.cost.total_usd", dbl(c.total)));
        a.push(kv("cost_probe.cost.energy_usd", dbl(c.energy)));
        a.push(kv("cost_probe.cost.capacity_usd", dbl(c.capacity)));
        a.push(kv("cost_probe.cost.egress_usd", dbl(c.egress)));
    }
    if let Some(g) = d.co2_g {
        a.push(kv("cost_probe.co2_g", dbl(g)));
    }
    if let Some(u) = d.usd_per_1k_tokens {
        a.push(kv("cost_probe.usd_per_1k_tokens", dbl(u)));
    }
    if let Some(at) = d.attribution {
        let method = serde_json::to_value(at.method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        a.push(kv("cost_probe.attribution.method", s(method)));
        for (k, v) in [
            ("cost_probe.queue_ms", at.queue_ms),
            ("cost_probe.prefill_ms", at.prefill_ms),
            ("cost_probe.energy.prefill_j", at.prefill_j),
            ("cost_probe.energy.decode_j", at.decode_j),
        ] {
            if let Some(v) = v {
                a.push(kv(k, dbl(v)));
            }
        }
    }
    if let Some(t) = d.ttfb_ms {
        a.push(kv("cost_probe.ttfb_ms", dbl(t)));
    }
    if let Some(t) = d.first_chunk_ms {
        a.push(kv("cost_probe.ttft_ms", dbl(t)));
    }
    if let Some(c) = d.chunks {
        a.push(kv("cost_probe.chunks", i(c)));
    }
    a.push(kv("cost_probe.bytes.in", i(d.bytes_in)));
    a.push(kv("cost_probe.bytes.out", i(d.bytes_out)));
    if !d.flags.as_slice().is_empty() {
        let values = d
            .flags
            .as_slice()
            .iter()
            .map(|f| AnyValue { value: Some(s(*f)) })
            .collect();
        a.push(kv(
            "cost_probe.flags",
            Value::ArrayValue(ArrayValue { values }),
        ));
    }
    for (k, v) in &d.tags {
        a.push(kv(&format!("cost_probe.tag.{k}"), s(v.as_str())));
    }
}

/// Each traced process's `Resource`, read once from /proc while it runs.
pub struct Resources {
    proc_root: PathBuf,
    host: String,
    service_name: Option<String>,
    user: Vec<(String, String)>,
    by_pid: HashMap<u32, Resource>,
}

/// Processes remembered before the cache starts afresh (pids are reused; an agent sees many).
const MAX_PROCESSES: usize = 4096;

impl Resources {
    pub fn new(config: &OtlpConfig, proc_root: PathBuf) -> Self {
        let host = std::fs::read_to_string(proc_root.join("sys/kernel/hostname"))
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Self {
            proc_root,
            host,
            service_name: config.service_name.clone(),
            user: config.resource.clone(),
            by_pid: HashMap::new(),
        }
    }

    pub fn get(&mut self, pid: u32, comm: &str) -> &Resource {
        if self.by_pid.len() >= MAX_PROCESSES && !self.by_pid.contains_key(&pid) {
            self.by_pid.clear();
        }
        let (root, host, service, user) =
            (&self.proc_root, &self.host, &self.service_name, &self.user);
        self.by_pid
            .entry(pid)
            .or_insert_with(|| resource(root, host, service.as_deref(), user, pid, comm))
    }

    /// The agent's own resource, for metrics (they cover every traced process).
    pub fn agent(&self) -> Resource {
        let me = std::process::id();
        let mut a = vec![kv(
            sc::SERVICE_NAME,
            s(self
                .service_name
                .clone()
                .unwrap_or_else(|| "cost-probe".into())),
        )];
        if !self.host.is_empty() {
            a.push(kv(sc::HOST_NAME, s(self.host.as_str())));
        }
        a.push(kv(sc::PROCESS_PID, i(me)));
        a.push(kv(sc::PROCESS_EXECUTABLE_NAME, s("cost-probe")));
        merge_user(&mut a, &self.user, self.service_name.is_some());
        Resource {
            attributes: a,
            ..Resource::default()
        }
    }
}

fn resource(
    root: &Path,
    host: &str,
    service_name: Option<&str>,
    user: &[(String, String)],
    pid: u32,
    comm: &str,
) -> Resource {
    let dir = root.join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe")).ok();
    let exe_name = exe
        .as_ref()
        .and_then(|p| p.file_name())
        .map_or_else(|| comm.to_owned(), |n| n.to_string_lossy().into_owned());
    let service = service_name.map_or_else(|| exe_name.clone(), str::to_owned);
    let mut a = vec![kv(sc::SERVICE_NAME, s(service))];
    if !host.is_empty() {
        a.push(kv(sc::HOST_NAME, s(host)));
    }
    a.push(kv(sc::PROCESS_PID, i(pid)));
    a.push(kv(sc::PROCESS_EXECUTABLE_NAME, s(exe_name)));
    if let Some(p) = &exe {
        a.push(kv(sc::PROCESS_EXECUTABLE_PATH, s(p.to_string_lossy())));
    }
    if let Ok(raw) = std::fs::read(dir.join("cmdline")) {
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.is_empty() {
            a.push(kv(sc::PROCESS_COMMAND_LINE, s(args.join(" "))));
        }
    }
    if let Ok(Some(c)) = crate::host::cgroup::read(root, pid) {
        if let Some(uid) = c.pod_uid {
            a.push(kv(sc::K8S_POD_UID, s(uid)));
        }
        if let Some(id) = c.container_id {
            a.push(kv(sc::CONTAINER_ID, s(id)));
        }
        if let Some(rt) = c.runtime {
            a.push(kv(sc::CONTAINER_RUNTIME, s(rt.as_str())));
        }
    }
    merge_user(&mut a, user, service_name.is_some());
    Resource {
        attributes: a,
        ..Resource::default()
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` win over what we detected (an operator may blank
/// `process.command_line`), except `service.name` when `OTEL_SERVICE_NAME` is set (the spec's
/// order).
fn merge_user(a: &mut Vec<KeyValue>, user: &[(String, String)], service_name_set: bool) {
    for (k, v) in user {
        if k == sc::SERVICE_NAME && service_name_set {
            continue;
        }
        match a.iter_mut().find(|kv| kv.key == *k) {
            Some(existing) => {
                existing.value = Some(AnyValue {
                    value: Some(s(v.as_str())),
                });
            }
            None => a.push(kv(k, s(v.as_str()))),
        }
    }
}
