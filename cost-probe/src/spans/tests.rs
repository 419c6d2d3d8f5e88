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
            SpanEvent::Started { .. } => None,
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

fn arb_event() -> impl Strategy<Value = OwnedEvent> {
    let conn = (0u32..2, 0i32..3).prop_map(|(t, fd)| crate::probe::ConnId { tgid: t, fd, id: 1 });
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
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
                SpanEvent::Finished(s) => {
                    prop_assert!(open.remove(&s.id), "finished twice or never started: {}", s.id);
                    prop_assert!(s.end >= s.start);
                }
            }
        }
        prop_assert!(open.is_empty(), "never finished: {:?}", open);
    }
}
