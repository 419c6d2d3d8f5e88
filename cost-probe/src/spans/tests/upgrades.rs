//! Protocol switches: a `101` upgrade (WebSocket, h2c) and a declined one.
use super::*;

const UPGRADE: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// #10.7: a WebSocket 101 lost its status (read as an interim 1xx) and the frames after it
/// were parsed as a response head, flagged malformed. The HTTP span ends with the 101 head;
/// the frames after it are turn-taking TCP spans, never HTTP requests.
#[test]
fn a_101_upgrade_keeps_its_status_and_ends_the_http_span() {
    // A server frame in the same write as the 101, then two client messages echoed.
    let mut first = SWITCHING.to_vec();
    first.extend_from_slice(b"\x81\x05hello");
    let (spans, started) = run(&conversation(&[
        (IN, UPGRADE),
        (OUT, &first),
        (IN, b"\x82\x85\x01\x02\x03\x04GET /"),
        (OUT, b"\x82\x05GET /"),
        (
            IN,
            b"\x81\x9c\x00\x00\x00\x00HTTP/1.1 200 OK\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ),
        (
            OUT,
            b"\x81\x1cHTTP/1.1 200 OK\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ),
    ]));
    assert_eq!(started, 3);
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/chat".into(), Some(101), vec![]),
            (Protocol::Tcp, String::new(), None, vec![]),
            (Protocol::Tcp, String::new(), None, vec![]),
        ]
    );
    // The HTTP span is the handshake: it ends with the 101 head, whose bytes alone it counts.
    assert_eq!((spans[0].start, spans[0].end), (1, 2));
    assert_eq!(spans[0].bytes_out, SWITCHING.len() as u64);
    assert_eq!((spans[1].start, spans[1].end), (3, 4));
}

/// An `h2c` upgrade continues as HTTP/2 (turn-taking, flagged approximate).
#[test]
fn an_h2c_upgrade_continues_as_http2() {
    let (spans, _) = run(&conversation(&[
        (
            IN,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        ),
        (OUT, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        (IN, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        (OUT, b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/".into(), Some(101), vec![]),
            (Protocol::Http2, String::new(), None, vec!["approximate"]),
        ]
    );
}

/// A server that declines an upgrade (here 426) keeps the connection HTTP.
#[test]
fn a_declined_upgrade_stays_http() {
    let (spans, _) = run(&conversation(&[
        (IN, UPGRADE),
        (
            OUT,
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
        ),
        (IN, b"GET /a HTTP/1.1\r\n\r\n"),
        (OUT, OK),
    ]));
    assert_eq!(
        summary(&spans),
        [
            (Protocol::Http1, "/chat".into(), Some(426), vec![]),
            (Protocol::Http1, "/a".into(), Some(200), vec![]),
        ]
    );
}
