//! What the big-payload tests share: the servers under test with their own request counts, the
//! assertions every test pins, and a generator of production-shaped request heads.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use cost_probe_tests::{Nginx, Records, Server, path_status};
use serde_json::Value;

/// A server under test: nginx (ground truth: its access log) or the Python asyncio server
/// (ground truth: the responses the client read).
pub(crate) enum Target {
    Nginx(Nginx),
    Python(Server),
}

impl Target {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Nginx(_) => "nginx",
            Self::Python(_) => "python",
        }
    }
    pub(crate) fn port(&self) -> u16 {
        match self {
            Self::Nginx(n) => n.port,
            Self::Python(s) => s.port,
        }
    }
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Self::Nginx(n) => n.master.pid(),
            Self::Python(s) => s.proc.pid(),
        }
    }
    /// What the server says it answered, as (path without query, status): nginx's access log,
    /// or for the Python server (which logs nothing) what its client read.
    pub(crate) fn served(&self, client_read: &[(String, u64)]) -> BTreeMap<(String, u64), usize> {
        match self {
            Self::Nginx(n) => multiset(n.access_log().iter().map(|l| {
                let (uri, status) = l.rsplit_once(' ').expect("log format");
                (
                    uri.split('?').next().unwrap().to_owned(),
                    status.parse().unwrap(),
                )
            })),
            Self::Python(_) => multiset(client_read.iter().cloned()),
        }
    }
}

pub(crate) fn multiset<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

pub(crate) fn no_query(path: &str) -> String {
    path.split('?').next().unwrap().to_owned()
}

/// One line per record, for failure messages.
pub(crate) fn describe(records: &[&Value]) -> String {
    records.iter().fold(String::new(), |mut s, r| {
        let _ = writeln!(
            s,
            "  {} {} {} in={} out={} flags={}",
            r["http"]["method"].as_str().unwrap_or("-"),
            r["http"]["path"].as_str().unwrap_or("-"),
            r["http"]["status"],
            r["bytes"]["in"],
            r["bytes"]["out"],
            r["flags"]
        );
        s
    })
}

/// The count every test pins: one record per request the server answered, no more, no fewer;
/// and the same (path, status) pairs, in the order the client completed them.
pub(crate) fn assert_one_record_per_answer(
    what: &str,
    target: &Target,
    records: &Records,
    client_read: &[(String, u64)],
) {
    let spans = records.requests();
    let served = target.served(client_read);
    let n_served: usize = served.values().sum();
    assert_eq!(
        n_served,
        client_read.len(),
        "{what}: the server's count and its client's disagree (test setup)"
    );
    let lost = &records.summary()["totals"]["lost_events"];
    assert_eq!(lost, 0, "{what}: the ring buffer dropped events");
    assert_eq!(
        spans.len(),
        n_served,
        "{what}: {} request records for {n_served} answered requests; records:\n{}",
        spans.len(),
        describe(&spans)
    );
    assert_eq!(
        multiset(spans.iter().map(|r| path_status(r))),
        served,
        "{what}: records vs the server's count; records:\n{}",
        describe(&spans)
    );
    let got: Vec<(String, u64)> = spans.iter().map(|r| path_status(r)).collect();
    assert_eq!(
        got, client_read,
        "{what}: records not in the order the client completed them"
    );
}

/// No request can last longer than the run that traced it (a span whose start was never seen
/// must not get one from nowhere).
pub(crate) fn assert_no_span_outlasts_the_run(what: &str, records: &Records, run: Duration) {
    let run_ms = run.as_secs_f64() * 1e3;
    let mut long = String::new();
    for r in records.requests() {
        if r["duration_ms"].as_f64().unwrap() > run_ms {
            let _ = write!(
                long,
                "  start {} end {} duration_ms {}\n{}",
                r["start"],
                r["end"],
                r["duration_ms"],
                describe(&[r])
            );
        }
    }
    assert!(
        long.is_empty(),
        "{what}: records that last longer than the {run_ms:.0} ms run:\n{long}"
    );
}

/// Deterministic pseudo-random text (xorshift64), so failures reproduce.
pub(crate) struct Noise(pub(crate) u64);

impl Noise {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn pick(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| char::from(alphabet[(self.next() % alphabet.len() as u64) as usize]))
            .collect()
    }
    pub(crate) fn b64(&mut self, n: usize) -> String {
        self.pick(
            n,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        )
    }
    pub(crate) fn hex(&mut self, n: usize) -> String {
        self.pick(n, b"0123456789abcdef")
    }
    /// A JWT-shaped token of `n` characters: base64url header, payload and signature.
    pub(crate) fn jwt(&mut self, n: usize) -> String {
        const HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjBhMWIyYyJ9";
        let sig = (n / 3).min(342);
        let payload = n.saturating_sub(HEADER.len() + sig + 2).max(1);
        let t = format!("{HEADER}.{}.{}", self.b64(payload), self.b64(sig));
        t[..n.min(t.len())].to_owned()
    }
}

/// A GET whose request head (request line through the blank line) is exactly `total` bytes, with
/// headers shaped like those behind an API gateway: the usual browser headers, W3C trace
/// context and baggage, `x-forwarded-*`, then a bearer JWT of about 1 KiB, cookies, an ALB OIDC
/// token, an Envoy client certificate and gateway context headers until `total` is reached. No
/// header line is longer than `max_line` bytes (CRLF included), except that the cookie line
/// takes all that is left when `max_line` exceeds it.
pub(crate) fn request_head(
    path: &str,
    total: usize,
    max_line: usize,
    close: bool,
    seed: u64,
) -> Vec<u8> {
    let mut n = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut lines: Vec<String> = vec![
        format!("GET {path} HTTP/1.1"),
        "Host: api.example.com".into(),
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/120.0.0.0 Safari/537.36"
            .into(),
        "Accept: application/json, text/plain, */*".into(),
        "Accept-Language: en-US,en;q=0.9".into(),
        format!("Connection: {}", if close { "close" } else { "keep-alive" }),
        format!("traceparent: 00-{}-{}-01", n.hex(32), n.hex(16)),
        format!("tracestate: rojo={},congo={}", n.hex(16), n.b64(12)),
        format!(
            "baggage: userId=alice,tenant=acme-corp,session={},isProduction=false",
            n.b64(22)
        ),
        "X-Forwarded-For: 203.0.113.195, 70.41.3.18, 150.172.238.178".into(),
        "X-Forwarded-Proto: https".into(),
        "X-Forwarded-Host: api.example.com".into(),
        "X-Forwarded-Port: 443".into(),
        format!(
            "X-Request-Id: {}-{}-{}-{}-{}",
            n.hex(8),
            n.hex(4),
            n.hex(4),
            n.hex(4),
            n.hex(12)
        ),
    ];
    // Bytes so far: each line and its CRLF, and the blank line.
    let used = |lines: &[String]| lines.iter().map(|l| l.len() + 2).sum::<usize>() + 2;
    assert!(
        used(&lines) < total,
        "{total} bytes cannot hold the base headers"
    );
    // (name, wanted line length with CRLF); the last one repeats until the budget is spent.
    let fillers = [
        ("Authorization: Bearer ", 1024 + 24),
        ("Cookie: ", max_line),
        ("X-Amzn-Oidc-Data: ", 1400.min(max_line)),
        ("X-Forwarded-Client-Cert: ", max_line),
    ];
    let mut i = 0;
    loop {
        let room = total - used(&lines);
        if room == 0 {
            break;
        }
        let (name, want) = fillers
            .get(i)
            .copied()
            .unwrap_or(("X-Gateway-Context-", max_line));
        let name = if i >= fillers.len() {
            format!("{name}{}: ", i - fillers.len())
        } else {
            name.to_owned()
        };
        // Take all the room, or leave at least 64 bytes for one more line.
        let take = if room <= want {
            room
        } else if room - want < 64 {
            want - 64
        } else {
            want
        };
        let value_len = take - 2 - name.len();
        let value = match i {
            0 | 2 => n.jwt(value_len),
            1 => {
                let fixed = format!(
                    "_ga=GA1.2.{}.1700000000; csrftoken={}; ",
                    n.hex(10),
                    n.hex(32)
                );
                let rest = value_len.saturating_sub(fixed.len() + "session=".len());
                format!("{fixed}session={}", n.b64(rest))[..value_len].to_owned()
            }
            _ => n.b64(value_len),
        };
        lines.push(format!("{name}{value}"));
        i += 1;
    }
    let mut head = lines.join("\r\n");
    head.push_str("\r\n\r\n");
    assert_eq!(head.len(), total);
    head.into_bytes()
}

/// The longest header line of a request head, CRLF included.
pub(crate) fn longest_line(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .map(|l| l.len() + 1)
        .max()
        .unwrap()
}
