//! Harness for the root/kernel integration tests and the overhead benchmark: real servers on
//! loopback, the real `cost-probe attach`, and a small HTTP/1.1 client whose counts are exact.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod otlp;

/// The workspace root (this crate lives in `tests/`).
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The cost-probe binary under test (`COST_PROBE_BIN`, else target/debug).
#[must_use]
pub fn bin() -> PathBuf {
    std::env::var_os("COST_PROBE_BIN").map_or_else(
        || workspace().join("target/debug/cost-probe"),
        PathBuf::from,
    )
}

/// Returns why these tests cannot run here, if they cannot (printed, then the test returns).
#[must_use]
pub fn skip_reason() -> Option<String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (eBPF); run through `cargo xtask test` as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() && !Path::new("/sys/kernel/tracing").exists()
    {
        return Some("kernel has no tracing support".into());
    }
    None
}

/// Skips the calling test (with the reason printed) when the kernel cannot trace.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(why) = $crate::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines from `r` until one satisfies `f`, with a deadline.
fn wait_line(
    r: impl Read + Send + 'static,
    timeout: Duration,
    f: impl Fn(&str) -> Option<String> + Send + 'static,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if !found && let Some(v) = f(&line) {
                found = true;
                let _ = tx.send(v);
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// A server started from a script that prints `listening PORT`.
pub struct Server {
    pub proc: Proc,
    pub port: u16,
}

impl Server {
    /// Starts `cmd` and waits for its `listening PORT` line.
    #[must_use]
    pub fn start(mut cmd: Command, timeout: Duration) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped");
        let proc = Proc { child };
        let port = wait_line(out, timeout, |l| {
            l.strip_prefix("listening ").map(|p| p.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{cmd:?} did not print `listening PORT` in {timeout:?}"));
        Self {
            proc,
            port: port.parse().expect("port number"),
        }
    }

    /// `tests/servers/sse_server.py` (python3 asyncio).
    #[must_use]
    pub fn python_sse() -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(workspace().join("tests/servers/sse_server.py"))
            .arg("0");
        Self::start(cmd, Duration::from_secs(10))
    }

    /// llama.cpp's server (`tests/servers/llama_server.py` in `.venv-llama/`), with
    /// environment overrides such as `LLAMA_N_PARALLEL`.
    #[must_use]
    pub fn llama(env: &[(&str, &str)]) -> Self {
        let py = workspace().join(".venv-llama/bin/python");
        assert!(
            py.exists(),
            "{} missing: run `cargo xtask setup --test-deps`",
            py.display()
        );
        let mut cmd = Command::new(py);
        cmd.arg(workspace().join("tests/servers/llama_server.py"))
            .arg("0")
            .envs(env.iter().copied());
        Self::start(cmd, Duration::from_mins(3))
    }
}

/// nginx in the foreground (`daemon off`), serving a directory on a free loopback port, with
/// an access log that is the ground truth for request counts.
pub struct Nginx {
    pub master: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// `workers` worker processes; `files` are (name, contents) put in the document root.
    #[must_use]
    pub fn start(workers: u32, files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("www");
        std::fs::create_dir(&root).expect("mkdir");
        for (name, body) in files {
            std::fs::write(root.join(name), body).expect("write file");
        }
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  log_format t '$request_uri $status';\n  access_log {d}/access.log t;\n\
                 keepalive_requests 1000000;\n  client_body_temp_path {d};\n\
                 proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n\
                 scgi_temp_path {d};\n  server {{ listen 127.0.0.1:{port}; root {r}; }}\n}}\n",
                d = dir.path().display(),
                r = root.display(),
            ),
        )
        .expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn nginx (apt-get install nginx; cargo xtask setup --test-deps)");
        let master = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            thread::sleep(Duration::from_millis(20));
        }
        // Wait for every worker to be forked.
        while children(master.pid()).len() < workers as usize {
            assert!(Instant::now() < deadline, "nginx workers did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Self { master, port, dir }
    }

    /// Lines of the access log (`$request_uri $status`), after nginx flushed it.
    #[must_use]
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Worker pids.
    #[must_use]
    pub fn workers(&self) -> Vec<u32> {
        children(self.master.pid())
    }
}

/// Direct children of a process.
#[must_use]
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `cost-probe attach`.
pub struct Attach {
    proc: Proc,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Attach {
    /// Starts tracing `pid` and waits until the probe is attached.
    #[must_use]
    pub fn start(pid: u32, extra: &[&str]) -> Self {
        Self::start_with(&bin(), pid, extra)
    }

    /// As [`Attach::start`], with another build of cost-probe (benchmark A/B runs).
    #[must_use]
    pub fn start_with(bin: &std::path::Path, pid: u32, extra: &[&str]) -> Self {
        Self::start_env(bin, pid, extra, &[])
    }

    /// As [`Attach::start_with`], with variables added to cost-probe's environment.
    #[must_use]
    pub fn start_env(
        bin: &std::path::Path,
        pid: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("records.ndjson");
        let mut child = Command::new(bin)
            .args(["attach", "--pid", &pid.to_string(), "--output"])
            .arg(&out)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let err = child.stderr.take().expect("piped");
        let proc = Proc { child };
        wait_line(err, Duration::from_secs(30), |l| {
            eprintln!("[cost-probe] {l}");
            l.contains("tracing pid").then(String::new)
        })
        .expect("cost-probe attach did not report attaching within 30 s");
        Self {
            proc,
            out,
            _dir: dir,
        }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGINT, wait for exit, and return every record.
    #[must_use]
    pub fn stop(mut self) -> Records {
        // Let the consumer drain what the kernel already has (it polls every 10 ms).
        thread::sleep(Duration::from_millis(100));
        self.proc.signal(libc::SIGINT);
        let status = self.proc.child.wait().expect("wait for cost-probe");
        assert!(status.success(), "cost-probe exited with {status}");
        self.records()
    }

    /// Waits for the probe to exit by itself (target exit, --duration).
    #[must_use]
    pub fn wait(mut self, timeout: Duration) -> Records {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.child.try_wait().expect("try_wait") {
                assert!(status.success(), "cost-probe exited with {status}");
                return self.records();
            }
            assert!(
                Instant::now() < deadline,
                "cost-probe did not exit in {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn records(&self) -> Records {
        let text = std::fs::read_to_string(&self.out).expect("read records");
        Records(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
                .collect(),
        )
    }
}

/// The NDJSON records of one run.
pub struct Records(pub Vec<Value>);

impl Records {
    #[must_use]
    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.0.iter().filter(|r| r["type"] == t).collect()
    }
    #[must_use]
    pub fn requests(&self) -> Vec<&Value> {
        self.of_type("request")
    }
    #[must_use]
    pub fn summary(&self) -> &Value {
        self.of_type("summary")
            .last()
            .copied()
            .expect("a summary record")
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection, exact about what completed.
pub struct Client {
    stream: BufReader<TcpStream>,
}

/// One response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Chunks of a chunked body, with the time each arrived.
    pub chunks: Vec<(Instant, Vec<u8>)>,
    pub sent: Instant,
    pub first_byte: Instant,
    pub done: Instant,
}

impl Client {
    #[must_use]
    pub fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Self {
            stream: BufReader::new(s),
        }
    }

    /// The client's own address (the server's peer).
    #[must_use]
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.stream.get_ref().local_addr().expect("local_addr")
    }

    /// Sends raw bytes (one or several requests) in one write.
    pub fn send(&mut self, raw: &[u8]) -> Instant {
        let t = Instant::now();
        self.stream.get_mut().write_all(raw).expect("write");
        t
    }

    /// GET with keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        let sent = self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response(sent)
    }

    /// POST a JSON body.
    pub fn post_json(&mut self, path: &str, body: &str) -> Response {
        let sent = self.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        self.read_response(sent)
    }

    /// Reads one response (Content-Length or chunked framing).
    pub fn read_response(&mut self, sent: Instant) -> Response {
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("status line");
        let first_byte = Instant::now();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        let mut chunks = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).expect("chunk size");
                let n = usize::from_str_radix(line.trim_end().split(';').next().unwrap(), 16)
                    .expect("hex chunk size");
                let mut c = vec![0; n + 2];
                self.stream.read_exact(&mut c).expect("chunk");
                c.truncate(n);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&c);
                chunks.push((Instant::now(), c));
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).expect("body");
        }
        Response {
            status,
            body,
            chunks,
            sent,
            first_byte,
            done: Instant::now(),
        }
    }
}

/// A request record's path and status (`"?"` and 0 when it has none).
#[must_use]
pub fn path_status(r: &Value) -> (String, u64) {
    (
        r["http"]["path"].as_str().unwrap_or("?").to_owned(),
        r["http"]["status"].as_u64().unwrap_or(0),
    )
}

/// The span-quality flags of a record (energy flags such as `estimated_cpu` only say where the
/// joules came from).
#[must_use]
pub fn quality_flags(r: &Value) -> Vec<&str> {
    const QUALITY: [&str; 5] = [
        "partial",
        "truncated",
        "malformed",
        "approximate",
        "no_response",
    ];
    r["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("a record without flags: {r}"))
        .iter()
        .filter_map(Value::as_str)
        .filter(|f| QUALITY.contains(f))
        .collect()
}
