//! An OTLP/HTTP receiver for the exporter tests: decodes what it is sent with the official
//! protobuf schema (the `opentelemetry-proto` types), and can be told to answer 503 or to drop
//! connections, as a collector under load or gone does.
use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{Metric, metric::Data, number_data_point::Value as NumberValue},
    resource::v1::Resource,
    trace::v1::Span,
};
use prost::Message;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// 503 with `Retry-After: 1`, nothing kept.
    Unavailable,
    /// The connection is closed without an answer, nothing kept (a collector that is gone).
    Down,
    /// 200 without decoding or keeping anything (benchmarks: the receiver's CPU stays out of
    /// the figures, and its memory flat).
    Discard,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    refused: u64,
    discarded: u64,
    bad: Vec<String>,
}

pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    #[must_use]
    pub fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State {
            mode: Some(mode),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                thread::spawn(move || serve(conn, &st));
            }
        });
        Self { port, state, stop }
    }

    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = Some(mode);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every span received, with its resource.
    #[must_use]
    pub fn spans(&self) -> Vec<(Resource, Span)> {
        let st = self.lock();
        assert!(st.bad.is_empty(), "malformed exports: {:?}", st.bad);
        st.traces
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| {
                let res = rs.resource.clone().unwrap_or_default();
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter())
                    .map(move |s| (res.clone(), s.clone()))
            })
            .collect()
    }

    /// Distinct span ids received (a retried export could repeat some).
    #[must_use]
    pub fn distinct_span_ids(&self) -> usize {
        self.spans()
            .into_iter()
            .map(|(_, s)| s.span_id)
            .collect::<HashSet<_>>()
            .len()
    }

    /// The metrics of the last metrics export.
    #[must_use]
    pub fn last_metrics(&self) -> Vec<Metric> {
        let st = self.lock();
        st.metrics
            .last()
            .map(|m| {
                m.resource_metrics
                    .iter()
                    .flat_map(|r| r.scope_metrics.iter())
                    .flat_map(|s| s.metrics.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Exports answered in [`Mode::Discard`].
    #[must_use]
    pub fn discarded(&self) -> u64 {
        self.lock().discarded
    }

    /// Exports answered 503 or dropped.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// Waits until `n` distinct spans have arrived.
    #[must_use]
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.distinct_span_ids() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut len, mut gzip, mut ctype) = (0usize, false, String::new());
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "content-encoding" => gzip = v.trim() == "gzip",
                "content-type" => v.trim().clone_into(&mut ctype),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mode = state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mode
            .unwrap_or(Mode::Accept);
        let reply: &[u8] = match mode {
            Mode::Down => {
                state.lock().unwrap_or_else(PoisonError::into_inner).refused += 1;
                return;
            }
            Mode::Unavailable => {
                state.lock().unwrap_or_else(PoisonError::into_inner).refused += 1;
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
            }
            Mode::Discard => {
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .discarded += 1;
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
            }
            Mode::Accept => {
                decode(state, &path, &ctype, gzip, &body);
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
            }
        };
        if r.get_mut().write_all(reply).is_err() {
            return;
        }
    }
}

fn decode(state: &Mutex<State>, path: &str, ctype: &str, gzip: bool, body: &[u8]) {
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    if ctype != "application/x-protobuf" {
        st.bad.push(format!("content-type {ctype:?}"));
        return;
    }
    let raw = if gzip {
        let mut out = Vec::new();
        if let Err(e) = flate2::read::GzDecoder::new(body).read_to_end(&mut out) {
            st.bad.push(format!("gzip: {e}"));
            return;
        }
        out
    } else {
        body.to_vec()
    };
    match path {
        "/v1/traces" => match ExportTraceServiceRequest::decode(raw.as_slice()) {
            Ok(m) => st.traces.push(m),
            Err(e) => st.bad.push(format!("traces: {e}")),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(raw.as_slice()) {
            Ok(m) => st.metrics.push(m),
            Err(e) => st.bad.push(format!("metrics: {e}")),
        },
        p => st.bad.push(format!("unexpected path {p}")),
    }
}

/// An attribute's value, by key.
#[must_use]
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[must_use]
pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

#[must_use]
pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

#[must_use]
pub fn attr_f64(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key) {
        Some(Value::DoubleValue(d)) => Some(*d),
        _ => None,
    }
}
