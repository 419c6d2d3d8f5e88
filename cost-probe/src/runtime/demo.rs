//! `demo`: a sample streaming LLM-style server, a small load, and the records.
//!
//! The server runs as a child process (`cost-probe demo-server`), so the demo traces a real
//! separate process over loopback exactly as `attach` would trace a production server.
use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
};

use super::{
    RuntimeError, SessionConfig,
    attach::{self, AttachConfig},
};
use crate::{host::ProcFs, output::OutputTarget, rules::Rules};

/// A validated `demo` invocation.
pub struct DemoConfig {
    pub rules: Rules,
    /// Requests to send.
    pub requests: u32,
    /// Concurrent client connections (keep-alive).
    pub concurrency: u32,
    pub output: OutputTarget,
}

fn demo_error(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Run(what.to_string().into())
}

/// Starts the sample server, attaches to it, sends the load, and stops once it is answered.
pub async fn run(config: DemoConfig) -> Result<(), RuntimeError> {
    let exe = std::env::current_exe()
        .map_err(|e| demo_error(format!("cannot find my own executable: {e}")))?;
    let mut server = Command::new(exe)
        .arg("demo-server")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| demo_error(format!("cannot start the demo server: {e}")))?;
    let pid = server
        .id()
        .ok_or_else(|| demo_error("the demo server exited at once"))?;
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    let port: u16 = match lines.next_line().await {
        Ok(Some(l)) if l.starts_with("listening ") => l[10..].trim().parse().unwrap_or(0),
        _ => return Err(demo_error("the demo server did not start")),
    };
    eprintln!(
        "demo: sample server (pid {pid}) streaming OpenAI-style chat completions on 127.0.0.1:{port}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    super::stop_on_signals(&stop);
    let attach = AttachConfig {
        session: SessionConfig {
            rules: config.rules,
            output: config.output,
            interval: Duration::from_millis(100),
            proc: ProcFs::default(),
            otlp: None,
        },
        pid,
        record: None,
    };
    let tracer = {
        let (stop, ready) = (stop.clone(), ready.clone());
        tokio::task::spawn_blocking(move || attach::run(&attach, &stop, Some(&ready)))
    };
    let joined = |r: Result<Result<(), RuntimeError>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Err(demo_error(format!("tracer thread failed: {e}"))))
    };
    while !ready.load(Ordering::Relaxed) {
        if tracer.is_finished() {
            return joined(tracer.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "demo: attached; sending {} requests over {} connections",
        config.requests, config.concurrency
    );
    let mut clients = Vec::new();
    let concurrency = config.concurrency.max(1);
    for c in 0..concurrency {
        let n = config.requests / concurrency + u32::from(c < config.requests % concurrency);
        clients.push(tokio::spawn(client(port, c, n)));
    }
    let mut ok = 0;
    for c in clients {
        match c.await {
            Ok(Ok(n)) => ok += n,
            Ok(Err(e)) => eprintln!("demo: client error: {e}"),
            Err(e) => eprintln!("demo: client failed: {e}"),
        }
    }
    // Let the last interval of energy samples close before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let result = joined(tracer.await);
    eprintln!("demo: {ok} requests completed");
    let _ = server.kill().await;
    result
}

/// The question every fourth request of each client asks, byte for byte the same: what an
/// exact-match cache would have answered (the report's cache opportunity).
const FAQ: &str = r#"{"model":"demo-small","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"What are your opening hours?"}]}"#;

/// One keep-alive client: `n` streamed chat completions of varying length, every fourth the
/// same FAQ.
async fn client(port: u16, c: u32, n: u32) -> std::io::Result<u32> {
    let mut s = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
    for i in 0..n {
        let tokens = 8 + (c * 7 + i * 13) % 40;
        let model = if (c + i).is_multiple_of(3) {
            "demo-large"
        } else {
            "demo-small"
        };
        let body = if i % 4 == 3 {
            FAQ.to_owned()
        } else {
            format!(
                r#"{{"model":"{model}","stream":true,"max_tokens":{tokens},"messages":[{{"role":"user","content":"request {c}-{i}"}}]}}"#
            )
        };
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.get_mut().write_all(req.as_bytes()).await?;
        read_chunked(&mut s).await?;
    }
    Ok(n)
}

/// Reads one chunked response to its terminal chunk.
async fn read_chunked(s: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
    }
    loop {
        line.clear();
        s.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim_end(), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut buf = vec![0; size + 2];
        s.read_exact(&mut buf).await?;
        if size == 0 {
            return Ok(());
        }
    }
}

/// `cost-probe demo-server`: streams `max_tokens` SSE chunks per chat completion, each after a
/// little CPU work and a pause (a stand-in for token generation), with usage in the last chunk.
pub async fn serve() -> Result<(), RuntimeError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| demo_error(format!("demo-server: {e}")))?;
    let port = listener.local_addr().map_or(0, |a| a.port());
    println!("listening {port}");
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = conn(sock).await;
        });
    }
}

async fn conn(sock: TcpStream) -> std::io::Result<()> {
    let mut s = BufReader::new(sock);
    let mut head = Vec::new();
    loop {
        head.clear();
        loop {
            let n = s.read_until(b'\n', &mut head).await?;
            if n == 0 {
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&head).is_err() {
            return Ok(());
        }
        let len = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
            .unwrap_or(0usize);
        let mut body = vec![0; len];
        s.read_exact(&mut body).await?;
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        stream_completion(s.get_mut(), &req).await?;
    }
}

async fn stream_completion(w: &mut TcpStream, req: &serde_json::Value) -> std::io::Result<()> {
    let model = req["model"].as_str().unwrap_or("demo-small").to_owned();
    let tokens = req["max_tokens"].as_u64().unwrap_or(16).min(512);
    let prompt = req["messages"].to_string().len() as u64 / 4 + 1;
    // Bigger "model", more work per token.
    let work = if model == "demo-large" {
        400_000
    } else {
        100_000
    };
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await?;
    for i in 0..tokens {
        let mut x = i;
        for k in 0..work {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(k);
        }
        std::hint::black_box(x);
        tokio::time::sleep(Duration::from_millis(4)).await;
        let data = format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i} \"}}}}]}}\n\n"
        );
        w.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await?;
    }
    let last = format!(
        "data: {{\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        prompt + tokens
    );
    w.write_all(format!("{:x}\r\n{last}\r\n0\r\n\r\n", last.len()).as_bytes())
        .await
}
