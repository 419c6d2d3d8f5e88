//! Streams and what follows a response: where a `[DONE]` ends an event stream, progress of
//! streamed responses, server timings, split first request lines, CONNECT tunnels.
use super::*;

/// Every event the builder emits for `events`, then a flush.
fn emitted(events: &[OwnedEvent]) -> Vec<SpanEvent> {
    let mut b = SpanBuilder::default();
    let mut out = Vec::new();
    for e in events {
        b.on_event(&e.borrowed(), &mut out);
    }
    b.flush(u64::MAX / 2, &mut out);
    out
}

/// (id, at, chunks) of each `Progress`.
fn progress(out: &[SpanEvent]) -> Vec<(u64, u64, u32)> {
    out.iter()
        .filter_map(|e| match *e {
            SpanEvent::Progress { id, at, chunks } => Some((id, at, chunks)),
            _ => None,
        })
        .collect()
}

const SSE_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Transfer-Encoding: chunked\r\n\r\n";
const SSE_UNFRAMED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";

/// #10 (fuzzing): the `[DONE]` scan ran over the whole write, so the `data: [DONE]` that ended
/// one response ended the unframed event stream that followed it in the same write.
#[test]
fn done_of_an_earlier_response_in_the_same_write_does_not_end_the_next_stream() {
    let mut w = SSE_CHUNKED.to_vec();
    w.extend_from_slice(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    w.extend_from_slice(SSE_UNFRAMED);
    w.extend_from_slice(b"data: 1\n\n");
    let (spans, _) = run(&conversation(&[
        (IN, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
        (OUT, &w),
        (OUT, b"data: 2\n\n"),
        (OUT, b"data: [DONE]\n\n"),
        (OUT, b"late"),
    ]));
    assert_eq!(spans.len(), 2);
    let b = &spans[1];
    assert_eq!(
        (b.path.as_deref(), b.chunks, b.end),
        (Some("/b"), Some(3), 4)
    );
    assert_eq!(b.bytes_out, (SSE_UNFRAMED.len() + 9 + 9 + 14) as u64);
    assert!(b.flags.names().eq(["streamed"]), "{:?}", b.flags);
}

/// A terminator that straddles the seam of a write copied whole in two pieces still ends the
/// stream; one hidden in a gap does not, and one in a later write ends it there.
#[test]
fn done_straddling_head_and_tail_ends_the_stream() {
    let mut ev = conversation(&[(IN, b"GET /s HTTP/1.1\r\n\r\n"), (OUT, SSE_UNFRAMED)]);
    let close = ev.pop().unwrap();
    ev.push(data(3, OUT, b"data: x\n\ndata: [DO", 0, b"NE]\n\n"));
    ev.push(data(4, OUT, b"after", 0, b""));
    ev.push(close);
    let (spans, _) = run(&ev);
    assert_eq!((spans[0].end, spans[0].chunks), (3, Some(1)));
    let mut ev = conversation(&[(IN, b"GET /s HTTP/1.1\r\n\r\n"), (OUT, SSE_UNFRAMED)]);
    let close = ev.pop().unwrap();
    ev.push(data(3, OUT, b"data: x\n\ndata: [DO", 4, b"\n\n"));
    ev.push(data(4, OUT, b"data: [DONE]\n\n", 0, b""));
    ev.push(close);
    let (spans, _) = run(&ev);
    assert_eq!((spans[0].end, spans[0].chunks), (4, Some(2)));
}

/// #10 (fuzzing): detection read only the first read, so a first request line a client wrote
/// in pieces (`GE`, then `T /x HTTP/1.1…`) made the whole connection TCP turns.
#[test]
fn a_first_request_line_split_across_reads_is_http() {
    let rest = b"T /x HTTP/1.1\r\nHost: t\r\n\r\n";
    let (spans, started) = run(&conversation(&[
        (IN, b"G"),
        (IN, b"E"),
        (IN, rest),
        (OUT, OK),
        (IN, b"GET /y HTTP/1.1\r\n\r\n"),
        (OUT, OK),
    ]));
    assert_eq!(started, 2);
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/x".into(), Some(200), vec![]),
            (Protocol::Http1, "/y".into(), Some(200), vec![]),
        ]
    );
    assert_eq!(
        spans[0].start, 1,
        "the request began with its first byte: {spans:?}"
    );
    assert_eq!(spans[0].bytes_in, 2 + rest.len() as u64);
    // Bytes held back and never completed are still a turn when the connection ends.
    let (spans, _) = run(&conversation(&[(IN, b"GE")]));
    assert_eq!(
        summary(&spans),
        [(Protocol::Tcp, String::new(), None, vec!["no_response"])]
    );
    assert_eq!(spans[0].bytes_in, 2);
    // A server that answers held bytes with a status line answered HTTP.
    let (spans, _) = run(&conversation(&[(IN, b"GE"), (OUT, BAD)]));
    assert_eq!(spans[0].protocol, Protocol::Http1);
    assert_eq!(spans[0].status, Some(400));
}

const CONNECT: &[u8] = b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n";
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// After a 2xx to CONNECT the connection is a tunnel: the CONNECT is one record with its
/// status, ending with that head, and what follows (TLS here) is never parsed as HTTP.
#[test]
fn a_connect_tunnel_ends_the_http_span_at_its_2xx() {
    let mut first = ESTABLISHED.to_vec();
    first.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    let (spans, started) = run(&conversation(&[
        (IN, CONNECT),
        (OUT, &first),
        (IN, b"\x16\x03\x01\x00\x05GET / HTTP/1.1\r\n\r\n"),
        (OUT, b"\x16\x03\x03\x00\x02HTTP/1.1 200 OK\r\n\r\n"),
    ]));
    assert_eq!(started, 2);
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "api.example:443".into(), Some(200), vec![]),
            (Protocol::Tcp, String::new(), None, vec![]),
        ]
    );
    assert_eq!(spans[0].method.as_deref(), Some("CONNECT"));
    assert_eq!(
        (spans[0].end, spans[0].bytes_out),
        (2, ESTABLISHED.len() as u64)
    );
    // Refused, the connection stays HTTP.
    let (spans, _) = run(&conversation(&[
        (IN, CONNECT),
        (OUT, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
        (IN, b"GET /x HTTP/1.1\r\n\r\n"),
        (OUT, OK),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "api.example:443".into(), Some(403), vec![]),
            (Protocol::Http1, "/x".into(), Some(200), vec![]),
        ]
    );
}

/// Each write of a streamed response that carries chunks is one `Progress`, in order between
/// the span's `Started` and `Finished`; their chunks sum to the span's. None for a body framed
/// by Content-Length, nor for a write carrying only the terminal chunk.
#[test]
fn progress_reports_each_write_of_a_stream() {
    let mut first = SSE_CHUNKED.to_vec();
    first.extend_from_slice(b"9\r\ndata: 1\n\n\r\n");
    let out = emitted(&conversation(&[
        (IN, b"GET /s HTTP/1.1\r\n\r\n"),
        (OUT, &first),
        (OUT, b"9\r\ndata: 2\n\n\r\n9\r\ndata: 3\n\n\r\n"),
        (OUT, b"0\r\n\r\n"),
        (IN, b"GET /fixed HTTP/1.1\r\n\r\n"),
        (OUT, OK),
        (IN, b"GET /u HTTP/1.1\r\n\r\n"),
        (OUT, SSE_UNFRAMED),
        (OUT, b"data: 1\n\n"),
        (OUT, b"data: 2\n\ndata: 3\n\n"),
    ]));
    assert_eq!(
        progress(&out),
        [(1, 2, 1), (1, 3, 2), (3, 9, 1), (3, 10, 1)]
    );
    // Each Progress sits between its span's Started and Finished.
    for (i, e) in out.iter().enumerate() {
        if let SpanEvent::Progress { id, .. } = *e {
            let started = out[..i]
                .iter()
                .any(|e| matches!(*e, SpanEvent::Started { id: s, .. } if s == id));
            let finished = out[i..]
                .iter()
                .any(|e| matches!(e, SpanEvent::Finished(s) if s.id == id));
            assert!(started && finished, "{out:#?}");
        }
    }
    let chunks: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            SpanEvent::Finished(s) => Some(s.chunks),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, [Some(3), None, Some(2)]);
}

/// A captured response body: the bytes after the fixture's `#` comment lines.
fn body_fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/spans/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut at = 0;
    while raw[at..].starts_with(b"#") {
        at += raw[at..]
            .iter()
            .position(|&c| c == b'\n')
            .expect("a comment line")
            + 1;
    }
    raw[at..].to_vec()
}

/// #10: llama.cpp's non-streamed chat completion written in two writes split at every offset:
/// a `timings` or `usage` object the boundary cut lost the figures after the cut. Read across
/// the seam, every figure is the server's at every split.
#[test]
fn timings_and_usage_cut_by_a_write_boundary_are_read_across_it() {
    let body = body_fixture("llama_cpp_chat_nonstream.body");
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(&body);
    let want = ServerTimings {
        prompt_n: Some(32),
        prompt_ms: Some(123.688),
        predicted_n: Some(8),
        predicted_ms: Some(59.657),
        cached_n: Some(0),
    };
    for split in 0..=resp.len() {
        let (spans, _) = run(&conversation(&[
            (
                IN,
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            ),
            (OUT, &resp[..split]),
            (OUT, &resp[split..]),
        ]));
        let s = &spans[0];
        assert_eq!(s.timings, Some(want), "split {split}");
        assert_eq!(
            (s.usage.prompt, s.usage.completion),
            (Some(32), Some(8)),
            "split {split}"
        );
        assert_eq!(
            s.model.as_deref(),
            Some("SmolLM2-135M-Instruct"),
            "split {split}"
        );
    }
}

/// llama.cpp's streamed chat completion: `timings` arrive in the last event before
/// `data: [DONE]`, written one event per chunk and write, the last event's write split in two
/// at every offset (#10: a split inside the object lost the figures after it).
#[test]
fn llama_cpp_timings_of_a_stream_in_its_last_chunk() {
    let body = body_fixture("llama_cpp_chat_stream.body");
    let events: Vec<&[u8]> = body
        .split_inclusive(|&c| c == b'\n')
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| {
            &body[offset(&body, pair[0])
                ..offset(&body, pair[pair.len() - 1]) + pair[pair.len() - 1].len()]
        })
        .collect();
    let want = ServerTimings {
        prompt_n: Some(1),
        prompt_ms: Some(9.85),
        predicted_n: Some(6),
        predicted_ms: Some(45.811),
        cached_n: Some(31),
    };
    let chunk = |e: &[u8]| {
        let mut c = format!("{:x}\r\n", e.len()).into_bytes();
        c.extend_from_slice(e);
        c.extend_from_slice(b"\r\n");
        c
    };
    let last = chunk(events[events.len() - 2]);
    for split in 0..=last.len() {
        let mut turns: Vec<(Direction, Vec<u8>)> = vec![
            (
                IN,
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ),
            (OUT, SSE_CHUNKED.to_vec()),
        ];
        for e in &events[..events.len() - 2] {
            turns.push((OUT, chunk(e)));
        }
        turns.push((OUT, last[..split].to_vec()));
        turns.push((OUT, last[split..].to_vec()));
        turns.push((OUT, chunk(events[events.len() - 1])));
        turns.push((OUT, b"0\r\n\r\n".to_vec()));
        let turns: Vec<(Direction, &[u8])> = turns.iter().map(|(d, b)| (*d, &b[..])).collect();
        let (spans, _) = run(&conversation(&turns));
        let s = &spans[0];
        assert_eq!(s.chunks, Some(events.len() as u32), "split {split}");
        assert_eq!(s.timings, Some(want), "split {split}");
    }
}

fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// #10: `usage` and `model` were read from the whole write and given to every response in it,
/// so pipelined responses written together traded figures (both took the last one's).
#[test]
fn pipelined_responses_in_one_write_keep_their_own_usage() {
    let reply = |model: &str, p: u32, c: u32| {
        let body = format!(
            r#"{{"model":"{model}","usage":{{"prompt_tokens":{p},"completion_tokens":{c}}}}}"#
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let both = reply("a", 11, 12) + &reply("b", 21, 22);
    let req = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    let (spans, _) = run(&conversation(&[
        (IN, &[&req[..], req].concat()),
        (OUT, both.as_bytes()),
    ]));
    let got: Vec<_> = spans
        .iter()
        .map(|s| (s.model.as_deref(), s.usage.prompt, s.usage.completion))
        .collect();
    assert_eq!(
        got,
        [
            (Some("a"), Some(11), Some(12)),
            (Some("b"), Some(21), Some(22))
        ]
    );
}
