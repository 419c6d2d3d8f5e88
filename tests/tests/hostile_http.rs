//! Requests with bytes a strict parser rejects, and protocol switches, against real servers:
//! every request a server answers is a record (#10.2), and a WebSocket upgrade is one HTTP
//! record with status 101, its frames never parsed as HTTP (#10.7). Run as root through
//! `cargo xtask test`.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use cost_probe_tests::{Attach, Client, Nginx, Server, quality_flags, require_kernel, workspace};
use serde_json::Value;

/// (path, status, quality flags) of a request record; status 0 when it has none.
fn seen(r: &Value) -> (String, u64, Vec<String>) {
    (
        r["http"]["path"].as_str().unwrap_or("?").to_owned(),
        r["http"]["status"].as_u64().unwrap_or(0),
        quality_flags(r).into_iter().map(str::to_owned).collect(),
    )
}

/// Sends `raw` on a new connection and reads until the server closes it.
fn until_close(port: u16, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("read until the server closes");
    got
}

fn malformed() -> Vec<String> {
    vec!["malformed".to_owned()]
}

/// nginx serves raw high bytes in a path (404) and a control byte in a header value (200) on
/// a keep-alive connection; it rejects a control byte or DEL in the path and a method that is
/// no token (400, then close), and serves an HTTP/0.9 line with a bare body. Each response is
/// a record (as many as its access log has lines), flagged malformed; normal requests are not.
#[test]
fn nginx_hostile_requests_are_each_a_record() {
    require_kernel!();
    let nginx = Nginx::start(1, &[("a.txt", b"a"), ("h.txt", b"h"), ("z.txt", b"z")]);
    let probe = Attach::start(nginx.master.pid(), &[]);
    let mut want = Vec::new();
    let mut c = Client::connect(nginx.port);
    for (raw, status, path, flags) in [
        (
            &b"GET /\x80\xff HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            404,
            "/\u{fffd}\u{fffd}",
            malformed(),
        ),
        (
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            200,
            "/a.txt",
            vec![],
        ),
        (
            b"GET /h.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
            200,
            "/h.txt",
            malformed(),
        ),
        (
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            200,
            "/a.txt",
            vec![],
        ),
    ] {
        let sent = c.send(raw);
        assert_eq!(c.read_response(sent).status, status, "{raw:?}");
        want.push((path.to_owned(), u64::from(status), flags));
    }
    drop(c);
    for (raw, path, status) in [
        (
            &b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            "/a\u{1}b",
            400,
        ),
        (b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n", "/a\u{7f}b", 400),
        // Not even a method: known only by its answer.
        (b"G\x01T /a.txt HTTP/1.1\r\nHost: t\r\n\r\n", "", 400),
        // HTTP/0.9: the file's bytes and a close, no status line.
        (b"GET /z.txt\r\n", "/z.txt", 0),
    ] {
        let got = until_close(nginx.port, raw);
        if status == 0 {
            assert_eq!(got, b"z");
        } else {
            assert!(got.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
        }
        want.push((path.to_owned(), status, malformed()));
    }
    let mut c = Client::connect(nginx.port);
    assert_eq!(c.get("/a.txt").status, 200);
    want.push(("/a.txt".to_owned(), 200, vec![]));
    drop(c);
    let records = probe.stop();
    let spans = records.requests();
    let logged = nginx.access_log();
    eprintln!("nginx access log: {logged:?}");
    assert_eq!(logged.len(), want.len(), "nginx answered every request");
    assert_eq!(
        spans.len(),
        logged.len(),
        "one record per response: {spans:#?}"
    );
    let mut got: Vec<_> = spans.iter().map(|r| seen(r)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(records.summary()["totals"]["lost_events"], 0);
}

/// Python's asyncio server splits its request line at spaces and its headers at colons: it
/// serves whatever bytes a path or header value has. One keep-alive connection, hostile and
/// normal requests interleaved: one record per response, in order, the hostile ones flagged.
#[test]
fn python_hostile_requests_are_each_a_record() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let chat = br#"{"model":"m","stream":false,"max_tokens":2}"#;
    let mut post = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Trace: \x01\x02\x7f\r\n\
         Content-Length: {}\r\n\r\n",
        chat.len()
    )
    .into_bytes();
    post.extend_from_slice(chat);
    let cases: Vec<(Vec<u8>, u16, &str, bool)> = vec![
        (
            b"GET /fixed?size=3&q=\x80\xff HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            200,
            "/fixed",
            true,
        ),
        (
            b"GET /fixed?size=1 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            200,
            "/fixed",
            false,
        ),
        (
            b"GET /fix\x80\xffed HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            404,
            "/fix\u{fffd}\u{fffd}ed",
            true,
        ),
        (
            b"GET /fi\x01xed HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            404,
            "/fi\u{1}xed",
            true,
        ),
        (
            b"GET /x\x7f HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            404,
            "/x\u{7f}",
            true,
        ),
        (
            b"GET /fixed?size=2 HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            200,
            "/fixed",
            true,
        ),
        // A leniently read head still frames its body: the next request stays in sync.
        (post, 200, "/v1/chat/completions", true),
        (
            b"GET /fixed?size=4 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            200,
            "/fixed",
            false,
        ),
    ];
    let mut c = Client::connect(server.port);
    for (raw, status, ..) in &cases {
        let sent = c.send(raw);
        assert_eq!(c.read_response(sent).status, *status, "{raw:?}");
    }
    drop(c);
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(
        spans.len(),
        cases.len(),
        "one record per response: {spans:#?}"
    );
    let got: Vec<_> = spans.iter().map(|r| seen(r)).collect();
    let want: Vec<_> = cases
        .iter()
        .map(|(_, status, path, hostile)| {
            let flags = if *hostile { malformed() } else { vec![] };
            ((*path).to_owned(), u64::from(*status), flags)
        })
        .collect();
    assert_eq!(got, want);
    // The body of the leniently read POST was framed and scanned like any other.
    assert_eq!(spans[6]["model"], "m");
    assert_eq!(spans[6]["tokens"]["completion"], 2);
    assert_eq!(records.summary()["totals"]["lost_events"], 0);
}

/// A masked client frame (RFC 6455 §5.3), payload < 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode, 0x80 | u8::try_from(payload.len()).unwrap()];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// #10.7: a WebSocket `101 Switching Protocols` lost its status and was flagged malformed.
/// The handshake is one HTTP record with status 101 that ends with the 101 head; the frames
/// after it (some of them carrying HTTP-looking text) are turn-taking TCP records, never HTTP
/// requests, and nothing is flagged.
#[test]
fn a_websocket_upgrade_is_one_101_record_and_its_frames_are_not_http() {
    const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    const MESSAGES: [&[u8]; 3] = [
        b"hello",
        b"GET /not-a-request HTTP/1.1\r\nHost: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    require_kernel!();
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/servers/ws_echo_server.py"))
        .arg("0");
    let server = Server::start(cmd, Duration::from_secs(10));
    let probe = Attach::start(server.proc.pid(), &[]);
    // Plain HTTP on its own connection first.
    let mut c = Client::connect(server.port);
    assert_eq!(c.get("/plain").status, 200);
    drop(c);

    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(UPGRADE).expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0; 1];
        s.read_exact(&mut b).expect("101 head");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    assert!(
        head.windows(28)
            .any(|w| w == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    for m in MESSAGES {
        s.write_all(&client_frame(0x2, m)).expect("frame");
        let mut echo = vec![0; 2 + m.len()];
        s.read_exact(&mut echo).expect("echo");
        assert_eq!((echo[0], &echo[2..]), (0x82, m));
    }
    s.write_all(&client_frame(0x8, b"\x03\xe8")).expect("close");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("close frame, then EOF");
    assert_eq!(rest, b"\x88\x02\x03\xe8");
    drop(s);

    let records = probe.stop();
    let spans = records.requests();
    let http: Vec<_> = spans
        .iter()
        .filter(|r| r["protocol"] == "http1")
        .map(|r| seen(r))
        .collect();
    assert_eq!(
        http,
        [
            ("/plain".to_owned(), 200, vec![]),
            ("/chat".to_owned(), 101, vec![])
        ],
        "{spans:#?}"
    );
    for r in &spans {
        assert!(quality_flags(r).is_empty(), "{r}");
    }
    // The 101 record counts the handshake's bytes, not the frames after it.
    let upgrade = spans.iter().find(|r| r["http"]["status"] == 101).unwrap();
    assert_eq!(upgrade["bytes"]["in"], UPGRADE.len());
    assert_eq!(upgrade["bytes"]["out"], head.len());
    // Each message and its echo is a turn, and so is the close.
    let turns: Vec<_> = spans.iter().filter(|r| r["protocol"] == "tcp").collect();
    assert_eq!(turns.len(), MESSAGES.len() + 1, "{spans:#?}");
    for t in &turns {
        assert!(t.get("http").is_none_or(Value::is_null), "{t}");
    }
    assert_eq!(records.summary()["totals"]["lost_events"], 0);
}

/// #10 (fuzzing): a client that writes its first request line in two writes (`GE`, then the
/// rest) made the whole connection turn-taking TCP, with no HTTP record. nginx reads the two
/// pieces apart (the client waits between them): both requests on the connection are HTTP
/// records, as many as the access log has lines.
#[test]
fn a_first_request_line_written_in_two_pieces_is_http() {
    require_kernel!();
    let nginx = Nginx::start(1, &[("a.txt", b"a")]);
    let probe = Attach::start(nginx.master.pid(), &[]);
    let mut c = Client::connect(nginx.port);
    c.send(b"GE");
    std::thread::sleep(Duration::from_millis(100));
    let sent = c.send(b"T /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(sent).status, 200);
    assert_eq!(c.get("/a.txt").status, 200);
    drop(c);
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(nginx.access_log().len(), 2, "nginx answered both");
    let got: Vec<_> = spans
        .iter()
        .map(|r| (r["protocol"].as_str().unwrap_or("?"), seen(r)))
        .collect();
    let http = ("http1", ("/a.txt".to_owned(), 200, vec![]));
    assert_eq!(got, [http.clone(), http], "{spans:#?}");
    assert_eq!(
        spans[0]["bytes"]["in"],
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n".len()
    );
    assert_eq!(records.summary()["totals"]["lost_events"], 0);
}
