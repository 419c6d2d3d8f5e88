//! Payloads larger than the kernel side's smallest capture (#10, acceptance 1): production-sized
//! request headers, a hundred pipelined requests in one write, 1 MiB request bodies and
//! non-streamed completions whose `usage` sits anywhere in 0.5-8 KiB. Real nginx and Python
//! servers on loopback; the number of `request` records must equal the server's own count
//! (nginx: its access log; Python: the responses the client read), every time. Run as root
//! through `cargo xtask test`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use cost_probe_tests::{Attach, Client, Nginx, Server, quality_flags, require_kernel, workspace};
use serde_json::Value;

mod payloads;
use payloads::{
    Noise, Target, assert_no_span_outlasts_the_run, assert_one_record_per_answer, describe,
    longest_line, no_query, request_head,
};

const HEADER_TOTALS: [usize; 4] = [1024, 4096, 8192, 16384];

#[test]
fn requests_with_1_4_8_and_16_kib_of_headers_are_each_a_record() {
    require_kernel!();
    let files: Vec<(String, Vec<u8>)> = HEADER_TOTALS
        .iter()
        .map(|t| {
            (
                format!("h{t}.json"),
                format!("{{\"headers\":{t}}}\n").into_bytes(),
            )
        })
        .chain([("small.txt".to_owned(), b"ok\n".to_vec())])
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    for target in [
        Target::Nginx(Nginx::start(1, &files)),
        Target::Python(Server::python_sse()),
    ] {
        let server = target.name();
        let path = |total: usize| match target {
            Target::Nginx(_) => format!("/h{total}.json?client=gw"),
            Target::Python(_) => format!("/fixed?size={}", total / 64),
        };
        let small = match target {
            Target::Nginx(_) => "/small.txt",
            Target::Python(_) => "/fixed?size=3",
        };
        let started = Instant::now();
        let probe = Attach::start(target.pid(), &[]);
        let mut read = Vec::new();
        let mut seed = 0;
        for total in HEADER_TOTALS {
            // Keep-alive: three big requests, with a small one after the second.
            let mut c = Client::connect(target.port());
            for k in 0..3 {
                seed += 1;
                let raw = request_head(&path(total), total, 4096, false, seed);
                assert!(longest_line(&raw) <= 4096);
                let sent = c.send(&raw);
                let r = c.read_response(sent);
                assert_eq!(
                    r.status, 200,
                    "{server}: {total}-byte head, keep-alive #{k}"
                );
                read.push((no_query(&path(total)), 200));
                if k == 1 {
                    let r = c.get(small);
                    assert_eq!(r.status, 200);
                    read.push((no_query(small), 200));
                }
            }
            drop(c);
            // One connection per request, closed by the server after its answer.
            for _ in 0..2 {
                seed += 1;
                let mut c = Client::connect(target.port());
                let sent = c.send(&request_head(&path(total), total, 4096, true, seed));
                let r = c.read_response(sent);
                assert_eq!(r.status, 200, "{server}: {total}-byte head, own connection");
                read.push((no_query(&path(total)), 200));
            }
        }
        // One header line over nginx's 8 KiB `large_client_header_buffers`: nginx answers 400
        // (Python takes it); the answer is a request like any other.
        let raw = request_head(&path(1024), 12 * 1024, 9 * 1024, false, 99);
        assert!(longest_line(&raw) > 8 * 1024);
        let mut c = Client::connect(target.port());
        let sent = c.send(&raw);
        let status = u64::from(c.read_response(sent).status);
        let want = if matches!(target, Target::Nginx(_)) {
            400
        } else {
            200
        };
        assert_eq!(status, want, "{server}: a 9 KiB header line");
        read.push((no_query(&path(1024)), status));
        drop(c);
        let records = probe.stop();
        let what = format!("{server}: 1-16 KiB heads");
        assert_one_record_per_answer(&what, &target, &records, &read);
        assert_no_span_outlasts_the_run(&what, &records, started.elapsed());
        // Every byte of these heads fits the captured record, so nothing is flagged; the one
        // answered 400 may be (nginx stops reading and closes).
        for r in records.requests() {
            if r["http"]["status"] == 200 {
                assert!(quality_flags(r).is_empty(), "{server}: {r}");
            }
        }
    }
}

#[test]
fn a_hundred_pipelined_requests_in_one_write_are_each_a_record() {
    require_kernel!();
    let bodies: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("r{i}"), vec![b'x'; i + 1]))
        .collect();
    let files: Vec<(&str, &[u8])> = bodies
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    for target in [
        Target::Nginx(Nginx::start(1, &files)),
        Target::Python(Server::python_sse()),
    ] {
        let server = target.name();
        let paths: Vec<String> = (0..100)
            .map(|i| match target {
                Target::Nginx(_) => format!("/r{i}"),
                Target::Python(_) => match i % 4 {
                    0 => format!("/fixed?size={i}"),
                    1 => format!("/chunked?n={}", 1 + i % 5),
                    2 => "/stream?n=2&delay_ms=0".to_owned(),
                    _ => format!("/missing/{i}"),
                },
            })
            .collect();
        // Compact requests (the whole write fits the largest record, ~3 KB), then requests
        // with 1 KiB heads (a 100 KiB write: most of it is past what any record copies).
        for (shape, raw) in [
            (
                "compact",
                paths.iter().fold(String::new(), |mut s, p| {
                    let _ = write!(s, "GET {p} HTTP/1.1\r\nHost: t\r\n\r\n");
                    s
                }),
            ),
            (
                "1 KiB heads",
                paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        String::from_utf8(request_head(p, 1024, 4096, false, i as u64)).unwrap()
                    })
                    .collect(),
            ),
        ] {
            let what = format!("{server}: 100 pipelined, {shape}");
            if let Target::Nginx(n) = &target {
                std::fs::write(n.dir.path().join("access.log"), b"").unwrap();
            }
            let started = Instant::now();
            let probe = Attach::start(target.pid(), &[]);
            let mut c = Client::connect(target.port());
            let sent = c.send(raw.as_bytes());
            let read: Vec<(String, u64)> = paths
                .iter()
                .map(|p| (no_query(p), u64::from(c.read_response(sent).status)))
                .collect();
            drop(c);
            let records = probe.stop();
            let spans = records.requests();
            assert_eq!(spans.len(), 100, "{what}: records:\n{}", describe(&spans));
            if shape == "compact" {
                // Every byte was captured: every field is known, in pipeline order.
                assert_one_record_per_answer(&what, &target, &records, &read);
            } else {
                // Past the captured window a request may be counted without its fields; each
                // record still answers one request, in order, with its status from the response.
                assert_eq!(
                    records.summary()["totals"]["lost_events"],
                    0,
                    "{what}: ring buffer dropped events"
                );
                let answered: usize = target.served(&read).values().sum();
                assert_eq!(answered, 100, "{what}: the server's count");
                let wrong: Vec<String> = spans
                    .iter()
                    .zip(&read)
                    .enumerate()
                    .filter_map(|(i, (r, (path, status)))| {
                        let known = r["http"]["path"].as_str().filter(|p| !p.is_empty());
                        let ok = r["http"]["status"] == *status
                            && known.map_or(!quality_flags(r).is_empty(), |p| p == path);
                        (!ok).then(|| format!("#{i}: want {path} {status}, got{}", describe(&[r])))
                    })
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "{what}: records out of step with the requests:\n{}",
                    wrong.concat()
                );
            }
            assert_no_span_outlasts_the_run(&what, &records, started.elapsed());
        }
    }
}

const MIB: usize = 1 << 20;

/// A POST with a `len`-byte body: the head and the body in one write, or the head and then the
/// body in 64 KiB writes.
fn post(c: &mut Client, path: &str, ctype: &str, body: &[u8], one_write: bool) -> u16 {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sent = if one_write {
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        c.send(&raw)
    } else {
        let sent = c.send(head.as_bytes());
        for piece in body.chunks(64 * 1024) {
            c.send(piece);
        }
        sent
    };
    c.read_response(sent).status
}

/// 1 MiB of upload bytes that contain, here and there, what looks like a request line.
fn upload_body() -> Vec<u8> {
    let mut n = Noise(7);
    let mut body = Vec::with_capacity(MIB);
    while body.len() < MIB {
        if body.len() % (100 * 1024) < 64 {
            body.extend_from_slice(b"GET /inside-the-body HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        body.extend_from_slice(n.b64(1000).as_bytes());
        body.push(b'\n');
    }
    body.truncate(MIB);
    body
}

#[test]
fn a_one_mib_request_body_is_one_record() {
    require_kernel!();
    let upload = upload_body();
    // A 1 MiB chat completion request: the prompt is small, a padding field makes it 1 MiB.
    let chat = {
        let head = r#"{"model":"big-body","stream":false,"max_tokens":7,"messages":[{"role":"user","content":"summarize the attachment"}],"padding":""#;
        let pad = MIB - head.len() - 2;
        format!("{head}{}\"}}", "p".repeat(pad))
    };
    assert_eq!(chat.len(), MIB);
    let after = b"after\n";
    for target in [
        Target::Nginx(Nginx::start(
            1,
            &[("upload.bin", b"static"), ("after.txt", after)],
        )),
        Target::Python(Server::python_sse()),
    ] {
        let server = target.name();
        let started = Instant::now();
        let probe = Attach::start(target.pid(), &[]);
        let mut read = Vec::new();
        let mut usage = None;
        let mut c = Client::connect(target.port());
        let next = match target {
            Target::Nginx(_) => "/after.txt",
            Target::Python(_) => "/fixed?size=6",
        };
        for one_write in [true, false] {
            match target {
                // POST to a static file: nginx reads (discards) the body and answers 405.
                Target::Nginx(_) => {
                    let s = post(
                        &mut c,
                        "/upload.bin",
                        "application/octet-stream",
                        &upload,
                        one_write,
                    );
                    read.push(("/upload.bin".to_owned(), u64::from(s)));
                }
                Target::Python(_) => {
                    let s = post(
                        &mut c,
                        "/fixed?size=10",
                        "application/octet-stream",
                        &upload,
                        one_write,
                    );
                    assert_eq!(s, 200);
                    read.push(("/fixed".to_owned(), 200));
                    let r = c.post_json("/v1/chat/completions", &chat);
                    assert_eq!(r.status, 200);
                    let v: Value = serde_json::from_slice(&r.body).unwrap();
                    usage = Some(v["usage"].clone());
                    read.push(("/v1/chat/completions".to_owned(), 200));
                }
            }
            // The connection is still in sync: the next request on it is a record too.
            let r = c.get(next);
            assert_eq!(r.status, 200, "{server}: the request after 1 MiB");
            read.push((no_query(next), 200));
        }
        drop(c);
        if let Target::Nginx(_) = target {
            // Over client_max_body_size (1 MiB): 413, answered before the body is read.
            let mut s = TcpStream::connect(("127.0.0.1", target.port())).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let head = format!(
                "POST /upload.bin HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                MIB + 1
            );
            s.write_all(head.as_bytes()).unwrap();
            // nginx may close before taking it all; what matters is its answer.
            let _ = s.write_all(&upload);
            let _ = s.write_all(b"x");
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            read.push(("/upload.bin".to_owned(), 413));
        }
        let records = probe.stop();
        let what = format!("{server}: 1 MiB bodies");
        assert_one_record_per_answer(&what, &target, &records, &read);
        assert_no_span_outlasts_the_run(&what, &records, started.elapsed());
        let spans = records.requests();
        for r in spans.iter().filter(|r| r["http"]["method"] == "POST") {
            if let Target::Python(_) = target {
                // The Python server reads every body before it answers.
                let inb = r["bytes"]["in"].as_u64().unwrap();
                assert!(inb >= MIB as u64, "{server}: bytes in {inb}: {r}");
            }
        }
        if let Some(u) = usage {
            let chat: Vec<&&Value> = spans
                .iter()
                .filter(|r| r["http"]["path"] == "/v1/chat/completions")
                .collect();
            for r in chat {
                assert_eq!(r["model"], "big-body", "{r}");
                assert_eq!(r["tokens"]["prompt"], u["prompt_tokens"], "{r}");
                assert_eq!(r["tokens"]["completion"], u["completion_tokens"], "{r}");
            }
        }
    }
}

/// Offsets of the usage member to try in a `size`-byte write: every offset near the start, the
/// end and each capture boundary (the old 512-byte head and 384-byte tail, the record sizes
/// 896 and 4096), so that the member starts before, straddles and follows each; and every 37th
/// offset in between.
fn usage_offsets(size: usize, lo: usize) -> Vec<usize> {
    // Longest usage member these tests produce (6-digit counts), and a margin for the `}`.
    const USAGE: usize = 90;
    let hi = size - USAGE - 1;
    let mut at: Vec<usize> = (lo..=hi).step_by(37).collect();
    at.extend(lo..lo + 80);
    at.extend(hi - 80..=hi);
    for b in [512, 896, 4096, size - 384] {
        at.extend(b.saturating_sub(USAGE + 2)..b + 2);
    }
    at.retain(|&a| (lo..=hi).contains(&a));
    at.sort_unstable();
    at.dedup();
    at
}

/// One non-streamed completion as its client read it.
struct Answer {
    model: String,
    prompt: u64,
    completion: u64,
    /// The write that carried the body: its size and the offset of `"usage"` in it.
    size: usize,
    at: usize,
    split: bool,
}

/// Asks the usage server for a `size`-byte write with usage at `at` (an offset, `start` or
/// `end`) and checks that it was placed there.
fn completion(c: &mut Client, i: usize, size: usize, at: &str, split: bool) -> Answer {
    const COMPLETIONS: [u64; 6] = [1, 42, 512, 4096, 65_535, 999_999];
    let model = format!("u-{i}");
    let content = "q".repeat(i * 7 % 600);
    let at_json = if at.parse::<usize>().is_ok() {
        at.to_owned()
    } else {
        format!("\"{at}\"")
    };
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{content}"}}],"max_tokens":{},"response_size":{size},"usage_at":{at_json},"split":{split}}}"#,
        COMPLETIONS[i % COMPLETIONS.len()]
    );
    let r = c.post_json("/v1/chat/completions", &body);
    assert_eq!(
        r.status,
        200,
        "size {size} usage at {at} split {split}: {}",
        String::from_utf8_lossy(&r.body)
    );
    // Where the usage member landed in the write that carried it.
    let head_len = if split {
        0
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            r.body.len()
        )
        .len()
    };
    let placed = head_len
        + r.body
            .windows(7)
            .position(|w| w == b"\"usage\"")
            .expect("usage in the body");
    assert_eq!(head_len + r.body.len(), size);
    if let Ok(k) = at.parse::<usize>() {
        assert_eq!(placed, k, "the server placed usage where asked");
    }
    let v: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert_eq!(v["model"], model.as_str());
    Answer {
        model,
        prompt: v["usage"]["prompt_tokens"].as_u64().unwrap(),
        completion: v["usage"]["completion_tokens"].as_u64().unwrap(),
        size,
        at: placed,
        split,
    }
}

#[test]
fn usage_is_read_from_non_streamed_responses_of_half_to_8_kib_at_every_offset() {
    const SIZES: [usize; 12] = [
        512, 640, 896, 897, 1024, 1536, 2048, 3000, 4096, 4097, 6144, 8192,
    ];
    require_kernel!();
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/servers/usage_server.py"))
        .arg("0");
    let target = Target::Python(Server::start(cmd, Duration::from_secs(10)));
    let started = Instant::now();
    let probe = Attach::start(target.pid(), &[]);
    let mut want = Vec::new();
    // Headers and body in two writes (offsets in the body), then in one.
    for split in [true, false] {
        let mut c = Client::connect(target.port());
        for size in SIZES {
            let offsets = usage_offsets(size, if split { 1 } else { 100 });
            for at in ["start".to_owned(), "end".to_owned()]
                .into_iter()
                .chain(offsets.iter().map(usize::to_string))
            {
                want.push(completion(&mut c, want.len(), size, &at, split));
            }
        }
    }
    let records = probe.stop();
    eprintln!("{} non-streamed completions", want.len());
    let read = vec![("/v1/chat/completions".to_owned(), 200); want.len()];
    assert_one_record_per_answer("usage at every offset", &target, &records, &read);
    assert_no_span_outlasts_the_run("usage at every offset", &records, started.elapsed());
    let by_model: BTreeMap<&str, &Value> = records
        .requests()
        .into_iter()
        .filter_map(|r| Some((r["model"].as_str()?, r)))
        .collect();
    let wrong: Vec<String> = want
        .iter()
        .filter_map(|w| {
            let got = by_model.get(w.model.as_str()).map(|r| {
                (
                    r["tokens"]["prompt"].as_u64(),
                    r["tokens"]["completion"].as_u64(),
                )
            });
            (got != Some((Some(w.prompt), Some(w.completion)))).then(|| {
                format!(
                    "{}-byte {} write, usage at {}: client {}/{}, record {got:?}",
                    w.size,
                    if w.split { "body" } else { "head+body" },
                    w.at,
                    w.prompt,
                    w.completion
                )
            })
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} responses: tokens differ from the client's:\n{}",
        wrong.len(),
        want.len(),
        wrong.join("\n")
    );
}

/// Past the acceptance item: heads of 20-30 KiB. nginx reads them in pieces of at most 8 KiB,
/// each captured whole; the Python server reads each in one read of which the kernel copies the
/// first 16 KiB and the last 384 bytes, so the request must be recovered around the gap (it may
/// be flagged) and the connection stay in sync for the next request.
#[test]
fn requests_with_heads_past_the_16_kib_capture_are_still_records() {
    require_kernel!();
    for target in [
        Target::Nginx(Nginx::start(
            1,
            &[("big.json", b"{}\n"), ("small.txt", b"ok\n")],
        )),
        Target::Python(Server::python_sse()),
    ] {
        let server = target.name();
        let (path, small) = match target {
            Target::Nginx(_) => ("/big.json", "/small.txt"),
            Target::Python(_) => ("/fixed?size=7", "/fixed?size=3"),
        };
        let started = Instant::now();
        let probe = Attach::start(target.pid(), &[]);
        let mut read = Vec::new();
        for (k, total) in [20 * 1024, 24 * 1024, 30 * 1024].into_iter().enumerate() {
            // Keep-alive: the big request, then a small one on the same connection.
            let mut c = Client::connect(target.port());
            let sent = c.send(&request_head(path, total, 4096, false, 1000 + k as u64));
            assert_eq!(c.read_response(sent).status, 200, "{server}: {total}");
            read.push((no_query(path), 200));
            assert_eq!(c.get(small).status, 200);
            read.push((no_query(small), 200));
            drop(c);
            let mut c = Client::connect(target.port());
            let sent = c.send(&request_head(path, total, 4096, true, 2000 + k as u64));
            assert_eq!(c.read_response(sent).status, 200, "{server}: {total}");
            read.push((no_query(path), 200));
        }
        let records = probe.stop();
        let what = format!("{server}: 20-30 KiB heads");
        assert_no_span_outlasts_the_run(&what, &records, started.elapsed());
        assert_one_record_per_answer(&what, &target, &records, &read);
    }
}
