//! The `/metrics` endpoint: plain HTTP/1.1 on tokio, one request per connection. A scrape is
//! the only client, so hyper's generality would buy nothing here.
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Metrics};

/// Concurrent scrapes served; more wait (loopback scrapers are few).
const MAX_CONNECTIONS: usize = 16;
const HEAD_LIMIT: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `addr` until an I/O error on the listener.
pub async fn serve(addr: SocketAddr, metrics: Arc<Mutex<Metrics>>) -> io::Result<()> {
    serve_listener(TcpListener::bind(addr).await?, metrics).await
}

/// [`serve`] on a bound listener (tests bind port 0 and read the address back).
pub async fn serve_listener(listener: TcpListener, metrics: Arc<Mutex<Metrics>>) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of fds or a connection reset before accept: transient, keep serving.
            Err(e) => {
                log::debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics).await {
                log::debug!("metrics request from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: &Mutex<Metrics>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    let Ok(head) = head else {
        return Ok(()); // The client went quiet: nothing to answer.
    };
    let (status, content_type, body, send_body) = match head? {
        None => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
            true,
        ),
        Some(()) => route(&buf, metrics),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        resp.push_str("Allow: GET, HEAD\r\n");
    }
    resp.push_str("\r\n");
    if send_body {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; `None` when it is too long.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(()));
        }
        if buf.len() >= HEAD_LIMIT {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// (status line, content type, body, whether to send the body).
fn route(head: &[u8], metrics: &Mutex<Metrics>) -> (&'static str, &'static str, String, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(path)) =
        (req.parse(head), req.method, req.path)
    else {
        return ("400 Bad Request", "text/plain", String::new(), true);
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if path != "/metrics" {
        return ("404 Not Found", "text/plain", "not found\n".into(), true);
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "text/plain", String::new(), true);
    }
    let openmetrics = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("accept")
            && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
    });
    // A panic elsewhere while holding the lock leaves counters that are still valid to read.
    let m = metrics.lock().unwrap_or_else(PoisonError::into_inner);
    let (ct, body) = if openmetrics {
        (CONTENT_TYPE_OPENMETRICS, m.encode_openmetrics())
    } else {
        (CONTENT_TYPE_TEXT, m.encode())
    };
    ("200 OK", ct, body, method == "GET")
}
