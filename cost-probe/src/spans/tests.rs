//! Span builder tests driven by recorded kernel events (cost-probe/tests/fixtures).
use proptest::prelude::*;

use super::*;
use crate::probe::{Direction, OwnedEvent};

fn fixture(name: &str) -> Vec<OwnedEvent> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}: {l}")))
        .collect()
}

fn run(events: &[OwnedEvent]) -> (Vec<RequestSpan>, usize) {
    let mut b = SpanBuilder::default();
    let mut out = Vec::new();
    for e in events {
        b.on_event(&e.borrowed(), &mut out);
    }
    b.flush(u64::MAX / 2, &mut out);
    let started = out
        .iter()
        .filter(|e| matches!(e, SpanEvent::Started { .. }))
        .count();
    let spans = out
        .into_iter()
        .filter_map(|e| match e {
            SpanEvent::Finished(s) => Some(s),
            SpanEvent::Started { .. } | SpanEvent::Progress { .. } => None,
        })
        .collect();
    (spans, started)
}

/// Index of the first write the server made (the first response).
fn first_response(events: &[OwnedEvent]) -> usize {
    events
        .iter()
        .position(|e| {
            matches!(
                e,
                OwnedEvent::Data {
                    dir: Direction::Out,
                    ..
                }
            )
        })
        .expect("the fixture has a response")
}

#[test]
fn python_asyncio_fixture_gives_exact_spans() {
    let (spans, started) = run(&fixture("python_asyncio_mixed.ndjson"));
    assert_eq!(started, 10);
    assert_eq!(spans.len(), 10);
    let got: Vec<(&str, &str, Option<u16>, Option<u32>)> = spans
        .iter()
        .map(|s| {
            (
                s.method.as_deref().unwrap(),
                s.path.as_deref().unwrap(),
                s.status,
                s.chunks,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET", "/stream", Some(200), Some(5)),
            ("GET", "/chunked", Some(200), Some(4)),
            ("GET", "/fixed", Some(200), None),
            ("POST", "/v1/chat/completions", Some(200), Some(6)),
            ("POST", "/v1/chat/completions", Some(200), None),
            ("GET", "/fixed", Some(200), None),
            ("GET", "/fixed", Some(200), None),
            ("GET", "/chunked", Some(200), Some(2)),
            ("GET", "/fixed", Some(200), None),
            ("GET", "/fixed", Some(200), None),
        ]
    );
    // Streamed chat: model from the request, usage from the last data chunk.
    let chat = &spans[3];
    assert_eq!(chat.model.as_deref(), Some("llama-test"));
    assert_eq!(chat.usage.completion, Some(4));
    assert!(chat.usage.prompt.is_some());
    assert!(chat.flags.contains(Flags::STREAMED));
    // Non-streamed chat: usage at the end of the one body write.
    assert_eq!(spans[4].usage.completion, Some(3));
    // The SSE stream ends at its last chunk, after its first byte.
    let sse = &spans[0];
    assert!(sse.first_byte.unwrap() < sse.first_chunk.unwrap());
    assert!(sse.first_chunk.unwrap() < sse.end);
    // Fixed body of 2000 bytes plus headers went out; the pipelined three share a start.
    assert!(spans[2].bytes_out > 2000);
    assert_eq!(spans[5].start, spans[6].start);
    assert!(spans[5].end <= spans[6].end && spans[6].end <= spans[7].end);
    assert!(
        spans
            .iter()
            .all(|s| s.flags.names().all(|f| f == "streamed"))
    );
}

#[test]
fn truncated_payloads_are_flagged_and_nothing_else_is_lost() {
    let mut events = fixture("python_asyncio_mixed.ndjson");
    // Hide the first response's headers behind a kernel gap: keep 4 bytes of head.
    let idx = first_response(&events);
    if let OwnedEvent::Data { head, .. } = &mut events[idx] {
        head.truncate(4);
    }
    let (spans, started) = run(&events);
    assert_eq!(started, 10);
    assert_eq!(spans.len(), 10);
    assert!(spans[0].flags.contains(Flags::TRUNCATED));
    assert_eq!(spans[0].status, None);
    // The other nine are untouched.
    assert!(spans[1..].iter().all(|s| s.status == Some(200)));
}

#[test]
fn malformed_status_line_is_flagged() {
    let mut events = fixture("python_asyncio_mixed.ndjson");
    let idx = first_response(&events);
    if let OwnedEvent::Data { head, .. } = &mut events[idx] {
        head[..8].copy_from_slice(b"XTTP/9.Z");
    }
    let (spans, _) = run(&events);
    assert_eq!(spans.len(), 10);
    assert!(spans[0].flags.contains(Flags::MALFORMED));
}

#[test]
fn close_mid_response_flushes_a_partial_span() {
    let events = fixture("python_asyncio_mixed.ndjson");
    // Cut the stream after the first response's headers, then close the connection.
    let first_out = first_response(&events);
    let OwnedEvent::Data { conn, ts, .. } = events[first_out].clone() else {
        unreachable!()
    };
    let mut cut = events[..=first_out].to_vec();
    cut.push(OwnedEvent::Close { ts: ts + 1, conn });
    let (spans, started) = run(&cut);
    assert_eq!((spans.len(), started), (1, 1));
    assert!(spans[0].flags.contains(Flags::PARTIAL));
    assert_eq!(spans[0].status, Some(200));
}

#[test]
fn http2_preface_is_flagged_approximate() {
    let conn = crate::probe::ConnId {
        tgid: 1,
        fd: 3,
        id: 1,
    };
    let ev = |ts, dir, b: &[u8]| OwnedEvent::Data {
        ts,
        conn,
        dir,
        len: b.len() as u64,
        head: b.to_vec(),
        tail: vec![],
    };
    let events = [
        OwnedEvent::Accept {
            ts: 0,
            conn,
            peer: None,
            listen_fd: 3,
            family_unknown: false,
        },
        ev(
            1,
            Direction::In,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
        ),
        ev(2, Direction::Out, b"\x00\x00\x06\x04\x00"),
        ev(3, Direction::In, b"\x00\x00\x20\x01\x05"),
        ev(4, Direction::Out, b"\x00\x00\x40\x00\x01"),
        OwnedEvent::Close { ts: 5, conn },
    ];
    let (spans, _) = run(&events);
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.protocol == Protocol::Http2));
    assert!(spans.iter().all(|s| s.flags.contains(Flags::APPROXIMATE)));
    assert_eq!((spans[1].start, spans[1].end), (3, 4));
}

const CONN: crate::probe::ConnId = crate::probe::ConnId {
    tgid: 1,
    fd: 3,
    id: 1,
};

/// One read or write, `hidden` bytes of it not copied (between its head and its tail).
fn data(ts: u64, dir: Direction, head: &[u8], hidden: u64, tail: &[u8]) -> OwnedEvent {
    OwnedEvent::Data {
        ts,
        conn: CONN,
        dir,
        len: (head.len() + tail.len()) as u64 + hidden,
        head: head.to_vec(),
        tail: tail.to_vec(),
    }
}

/// An accepted connection: each (direction, bytes) at ts 1, 2, ..., then a close.
fn conversation(turns: &[(Direction, &[u8])]) -> Vec<OwnedEvent> {
    let mut ev = vec![OwnedEvent::Accept {
        ts: 0,
        conn: CONN,
        peer: None,
        listen_fd: 3,
        family_unknown: false,
    }];
    let mut ts = 0;
    for (dir, b) in turns {
        ts += 1;
        ev.push(data(ts, *dir, b, 0, b""));
    }
    ev.push(OwnedEvent::Close {
        ts: ts + 1,
        conn: CONN,
    });
    ev
}

fn summary(spans: &[RequestSpan]) -> Vec<(Protocol, String, Option<u16>, Vec<&'static str>)> {
    spans
        .iter()
        .map(|s| {
            (
                s.protocol,
                s.path.as_deref().unwrap_or_default().to_owned(),
                s.status,
                s.flags.names().collect(),
            )
        })
        .collect()
}

const IN: Direction = Direction::In;
const OUT: Direction = Direction::Out;
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad";

/// #10.2: raw 0x80/0xFF in the path (httparse: not UTF-8) was no record; nginx answers 404.
#[test]
fn raw_high_bytes_in_the_path_still_make_a_record() {
    let (spans, started) = run(&conversation(&[
        (IN, b"GET /\x80\xff HTTP/1.1\r\nHost: t\r\n\r\n"),
        (OUT, NOT_FOUND),
        (IN, b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"),
        (OUT, OK),
    ]));
    assert_eq!(started, 2);
    assert_eq!(
        summary(&spans),
        [
            (
                Protocol::Http1,
                "/\u{fffd}\u{fffd}".into(),
                Some(404),
                vec!["malformed"]
            ),
            (Protocol::Http1, "/a".into(), Some(200), vec![]),
        ]
    );
}

/// #10.2: control bytes in the path (nginx: 400 and close; Python: served).
#[test]
fn control_bytes_in_the_path_still_make_a_record() {
    let (spans, _) = run(&conversation(&[
        (IN, b"GET /fixed\x01\x7f?size=2 HTTP/1.1\r\nHost: t\r\n\r\n"),
        (OUT, OK),
        (IN, b"GET /a\x1bb HTTP/1.1\r\nHost: t\r\n\r\n"),
        (OUT, BAD),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (
                Protocol::Http1,
                "/fixed\u{1}\u{7f}".into(),
                Some(200),
                vec!["malformed"]
            ),
            (
                Protocol::Http1,
                "/a\u{1b}b".into(),
                Some(400),
                vec!["malformed"]
            ),
        ]
    );
}

/// #10.2: a control byte in a header value (nginx and Python answer 200), pipelined with a
/// normal request behind it: both are records, in order, and only the first is flagged.
#[test]
fn a_control_byte_in_a_header_value_still_makes_a_record() {
    let (spans, _) = run(&conversation(&[
        (
            IN,
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (OUT, OK),
        (OUT, NOT_FOUND),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/a".into(), Some(200), vec!["malformed"]),
            (Protocol::Http1, "/b".into(), Some(404), vec![]),
        ]
    );
}

/// #10.2: nginx rejects a bad request line before its headers end, and serves an HTTP/0.9
/// line with a bare body: neither parses as a head, both are answered, so both are records.
#[test]
fn a_request_answered_before_it_parses_is_a_record() {
    let (spans, started) = run(&conversation(&[
        (IN, b"GET /ok HTTP/1.1\r\n\r\n"),
        (OUT, OK),
        (IN, b"G\x01T /x HTTP/1.1\r\nHo"),
        (OUT, BAD),
    ]));
    assert_eq!(started, 2);
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/ok".into(), Some(200), vec![]),
            (Protocol::Http1, String::new(), Some(400), vec!["malformed"]),
        ]
    );
    assert_eq!(spans[1].bytes_in, 19);
    let (spans, _) = run(&conversation(&[(IN, b"GET /a.txt\r\n"), (OUT, b"hello\n")]));
    assert_eq!(
        summary(&spans),
        [(Protocol::Http1, "/a.txt".into(), None, vec!["malformed"])]
    );
    assert_eq!(spans[0].method.as_deref(), Some("GET"));
}

/// A connection whose first line is no known method but ends in an HTTP/1 version is HTTP/1:
/// another method is parsed, and one that is no token is still answered (nginx: 400).
#[test]
fn a_first_line_with_an_http_version_is_http1_whatever_its_method() {
    let (spans, _) = run(&conversation(&[
        (IN, b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n"),
        (
            OUT,
            b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n",
        ),
    ]));
    assert_eq!(
        summary(&spans),
        [(Protocol::Http1, "/dav".into(), Some(207), vec![])]
    );
    assert_eq!(spans[0].method.as_deref(), Some("PROPFIND"));
    let (spans, _) = run(&conversation(&[
        (IN, b"G\x01T /x HTTP/1.1\r\nHost: t\r\n\r\n"),
        (OUT, BAD),
    ]));
    assert_eq!(
        summary(&spans),
        [(Protocol::Http1, String::new(), Some(400), vec!["malformed"])]
    );
    // Anything else from its first byte is still turn-taking TCP.
    let (spans, _) = run(&conversation(&[(IN, b"\x16\x03\x01\x00"), (OUT, b"\x15")]));
    assert_eq!(
        summary(&spans),
        [(Protocol::Tcp, String::new(), None, vec![])]
    );
}

/// Bytes that are no request and that the server does not answer are no record.
#[test]
fn unanswered_junk_is_no_record() {
    let (spans, started) = run(&conversation(&[
        (IN, b"GET /ok HTTP/1.1\r\n\r\n"),
        (OUT, OK),
        (IN, b"\x16\x03\x01 junk\r\n\r\n"),
    ]));
    assert_eq!((spans.len(), started), (1, 1));
}

/// #10.2, response side: a status line or header with odd bytes keeps its status and framing,
/// and the request behind it pairs with its own response.
#[test]
fn odd_bytes_in_a_response_keep_the_request_and_its_status() {
    let (spans, _) = run(&conversation(&[
        (IN, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
        (
            OUT,
            b"HTTP/1.1 200 O\x01K\r\nX-Echo: \x01\xff\r\nContent-Length: 2\r\n\r\nok",
        ),
        (OUT, NOT_FOUND),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/a".into(), Some(200), vec!["malformed"]),
            (Protocol::Http1, "/b".into(), Some(404), vec![]),
        ]
    );
}

/// A response head that cannot be read at all runs to the next response's status line when
/// the next request is already queued, rather than swallowing the responses behind it.
#[test]
fn an_unreadable_response_head_ends_at_the_next_status_line() {
    let (spans, _) = run(&conversation(&[
        (IN, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
        (OUT, b"XTTP/1.1 200 OK\r\n\r\nbody"),
        (OUT, NOT_FOUND),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/a".into(), None, vec!["malformed"]),
            (Protocol::Http1, "/b".into(), Some(404), vec![]),
        ]
    );
    assert_eq!(spans[0].end, 2);
}

/// A request whose head a kernel gap hid is a record once the server answers it, with what
/// its captured first bytes showed (method, path), flagged truncated; the next one is clean.
#[test]
fn a_request_whose_head_a_gap_hid_is_kept_when_answered() {
    let mut ev = conversation(&[]);
    let close = ev.pop().unwrap();
    ev.extend([
        data(
            1,
            IN,
            b"GET /big HTTP/1.1\r\nCookie: aaaa",
            900,
            b"aaaa\r\n\r\n",
        ),
        data(2, OUT, OK, 0, b""),
        data(3, IN, b"GET /next HTTP/1.1\r\n\r\n", 0, b""),
        data(4, OUT, NOT_FOUND, 0, b""),
        close,
    ]);
    let (spans, started) = run(&ev);
    assert_eq!(started, 2);
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/big".into(), Some(200), vec!["truncated"]),
            (Protocol::Http1, "/next".into(), Some(404), vec![]),
        ]
    );
    assert_eq!(spans[0].bytes_in, 31 + 900 + 8);
}

fn arb_event() -> impl Strategy<Value = OwnedEvent> {
    let conn = (0u32..2, 0i32..3).prop_map(|(t, fd)| crate::probe::ConnId { tgid: t, fd, id: 1 });
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        // Heads httparse rejects, and protocol switches.
        Just(b"GET /\x80\x01 HTTP/1.1\r\nX: \x01\r\nContent-Length: 2\r\n\r\nab".to_vec()),
        Just(b"G\x01T / HTTP/1.1\r\n".to_vec()),
        Just(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x01a".to_vec()),
        Just(b"HTTP/1.1 200 \x01\r\nContent-Length: 1\r\n\r\nx".to_vec()),
    ];
    prop_oneof![
        (conn.clone(), any::<bool>(), payload, 0u64..5000).prop_map(|(conn, inb, head, extra)| {
            OwnedEvent::Data {
                ts: 0,
                conn,
                dir: if inb { Direction::In } else { Direction::Out },
                len: head.len() as u64 + extra,
                head,
                tail: vec![],
            }
        }),
        conn.clone().prop_map(|conn| OwnedEvent::Accept {
            ts: 0,
            conn,
            peer: None,
            listen_fd: 1,
            family_unknown: false,
        }),
        conn.prop_map(|conn| OwnedEvent::Close { ts: 0, conn }),
        (0u32..2).prop_map(|tgid| OwnedEvent::ProcExit { ts: 0, tgid }),
    ]
}

proptest! {
    /// Whatever the kernel sends, the builder does not panic and every started span is
    /// finished exactly once (after a flush), never with its end before its start.
    #[test]
    fn every_started_span_finishes_once(mut events in prop::collection::vec(arb_event(), 0..60)) {
        for (i, e) in events.iter_mut().enumerate() {
            let t = i as u64 * 10;
            match e {
                OwnedEvent::Data { ts, .. } | OwnedEvent::Accept { ts, .. }
                | OwnedEvent::Close { ts, .. } | OwnedEvent::ProcExit { ts, .. }
                | OwnedEvent::Exec { ts, .. } => *ts = t,
            }
        }
        let mut b = SpanBuilder::default();
        let mut out = Vec::new();
        for e in &events {
            b.on_event(&e.borrowed(), &mut out);
        }
        b.flush(1_000_000, &mut out);
        let mut open = std::collections::HashSet::new();
        for e in &out {
            match e {
                SpanEvent::Started { id, .. } => prop_assert!(open.insert(*id)),
                SpanEvent::Progress { id, .. } => prop_assert!(open.contains(id)),
                SpanEvent::Finished(s) => {
                    prop_assert!(open.remove(&s.id), "finished twice or never started: {}", s.id);
                    prop_assert!(s.end >= s.start);
                }
            }
        }
        prop_assert!(open.is_empty(), "never finished: {:?}", open);
    }
}

/// Regression (found by `big_payloads`): a response of 513–896 bytes comes whole in the small
/// record as 512 head bytes and the rest as the tail; a `usage` object straddling byte 512 lost
/// a count because the two pieces were scanned apart.
#[test]
fn usage_straddling_the_small_records_seam_is_read_whole() {
    for pad in [370usize, 385, 400, 410, 415] {
        let json = format!(
            r#"{{"model":"m","pad":"{}","usage":{{"prompt_tokens":31,"completion_tokens":4096}}}}"#,
            "x".repeat(pad)
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        let b = resp.as_bytes();
        assert!(b.len() > 512 && b.len() <= 896);
        let at = resp.find("\"usage\"").unwrap();
        assert!(at < 512 && at + 60 > 512, "usage straddles byte 512");
        let events = vec![
            OwnedEvent::Accept {
                ts: 0,
                conn: CONN,
                peer: None,
                listen_fd: 3,
                family_unknown: false,
            },
            data(
                1,
                IN,
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                0,
                b"",
            ),
            // As the kernel copies it: the first 512 bytes, then the rest as the tail.
            data(2, OUT, &b[..512], 0, &b[512..]),
            OwnedEvent::Close { ts: 3, conn: CONN },
        ];
        let (spans, _) = run(&events);
        assert_eq!(spans.len(), 1);
        assert_eq!(
            (spans[0].usage.prompt, spans[0].usage.completion),
            (Some(31), Some(4096)),
            "pad {pad}"
        );
    }
}

/// Regression (found by `big_payloads`, recorded with `attach --record` against the Python
/// server): 100 pipelined requests of 1 KiB headers in one 100 KiB read, of which the kernel
/// copies the first 16 KiB and the last 384 bytes. The request cut by the capture's edge had a
/// start of 0 (the boot time): every span now starts within the traffic.
#[test]
fn a_pipelined_request_cut_by_the_capture_edge_keeps_its_start() {
    let events = fixture("python_pipelined_1k_heads.ndjson");
    let first = events[0].borrowed().ts();
    let (spans, _) = run(&events);
    assert_eq!(spans.len(), 100, "one span per answered request");
    for (i, s) in spans.iter().enumerate() {
        assert!(
            s.start >= first && s.start <= s.end,
            "span {i} starts at {} (traffic from {first}): {s:?}",
            s.start
        );
    }
    // The first 16 requests were copied whole: the loss after them is not theirs.
    for s in &spans[..16] {
        assert!(!s.flags.contains(Flags::TRUNCATED), "{s:?}");
    }
    assert!(spans[16].flags.contains(Flags::TRUNCATED));
}

/// Regression (found by `big_payloads`): 100 pipelined requests of 1 KiB headers read in two
/// large reads (64 KiB, then the rest), copied as the kernel copies them (the first 16 KiB and
/// the last 384 bytes of the first read, 512 + 384 of the second): every answered request is a
/// record, and none starts before the traffic did (the request cut by the capture's edge got a
/// start of 0, the boot time).
#[test]
fn pipelined_requests_cut_by_the_capture_keep_their_times() {
    let mut stream = Vec::new();
    for i in 0..100 {
        let pad = "a".repeat(1000);
        stream.extend_from_slice(
            format!("GET /r{i} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n").as_bytes(),
        );
    }
    let (first, rest) = stream.split_at(65_536);
    let cut = |b: &[u8], head: usize| -> (Vec<u8>, u64, Vec<u8>) {
        let tail = 384.min(b.len() - head);
        (
            b[..head].to_vec(),
            (b.len() - head - tail) as u64,
            b[b.len() - tail..].to_vec(),
        )
    };
    let (h1, g1, t1) = cut(first, 16_384);
    let (h2, g2, t2) = cut(rest, 512);
    let mut events = vec![
        OwnedEvent::Accept {
            ts: 1_000,
            conn: CONN,
            peer: None,
            listen_fd: 3,
            family_unknown: false,
        },
        data(2_000, IN, &h1, g1, &t1),
        data(3_000, IN, &h2, g2, &t2),
    ];
    for i in 0..100 {
        events.push(data(
            4_000 + i,
            OUT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            0,
            b"",
        ));
    }
    events.push(OwnedEvent::Close {
        ts: 5_000,
        conn: CONN,
    });
    let (spans, _) = run(&events);
    assert_eq!(spans.len(), 100, "one span per answered request");
    for s in &spans {
        assert!(s.start >= 2_000 && s.start <= s.end, "{s:?}");
    }
}

mod streams;
mod upgrades;
