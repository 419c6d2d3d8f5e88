//! `[[tag]]` rules that match on the traced process (`comm`), in `attach` and in `agent`.
//!
//! The server is `tests/servers/sse_server.py` run by a copy of the python3 interpreter under
//! another file name, so the kernel's comm for every one of its threads is that name.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use cost_probe_tests::{Attach, Client, Proc, Records, Server, bin, require_kernel, workspace};
use serde_json::Value;

/// A path-only rule, a comm-only rule, a path + comm rule shaped like the built-in
/// `path = "/api/*", comm = "ollama*"` one, and a cmdline rule (which was dead the same way).
const TAG_RULES: &str = r#"
[[tag]]
path = "/fixed"
set = { route = "fixed" }

[[tag]]
comm = "costprobe-*"
set = { team = "ml", proc = "$comm" }

[[tag]]
path = "/fixed"
comm = "costprobe-*"
set = { endpoint = "$path" }

[[tag]]
cmdline = "sse_server\\.py"
set = { script = "sse" }
"#;

const REQUESTS: usize = 5;

/// `sse_server.py` run by a copy of python3 named `comm` (at most 15 bytes: the kernel's limit),
/// so that `/proc/PID/comm` is `comm`. The directory holding the copy lives as long as the server.
fn python_named(comm: &str) -> (tempfile::TempDir, Server) {
    assert!(
        comm.len() <= 15,
        "comm {comm:?} is longer than TASK_COMM_LEN"
    );
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8(out.stdout).expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join(comm);
    std::fs::copy(python.trim(), &exe).expect("copy the python3 interpreter");
    let mut cmd = Command::new(&exe);
    cmd.arg(workspace().join("tests/servers/sse_server.py"))
        .arg("0");
    let server = Server::start(cmd, Duration::from_secs(10));
    let actual = std::fs::read_to_string(format!("/proc/{}/comm", server.proc.pid()))
        .expect("read /proc/PID/comm");
    assert_eq!(
        actual.trim_end(),
        comm,
        "the server's comm is the copy's name"
    );
    (dir, server)
}

fn send_requests(port: u16) {
    let mut c = Client::connect(port);
    for i in 0..REQUESTS {
        assert_eq!(c.get(&format!("/fixed?size={}", i + 1)).status, 200);
    }
}

/// Every request carries the path-only tag (tagging works at all) and the comm tags.
fn assert_comm_tags(records: &Records, comm: &str) {
    let spans = records.requests();
    assert_eq!(spans.len(), REQUESTS, "one record per request");
    for s in &spans {
        let tags = &s["tags"];
        assert_eq!(tags["route"], "fixed", "the path-only rule fires: {s}");
        assert_eq!(
            (&tags["team"], &tags["proc"], &tags["endpoint"]),
            (
                &Value::from("ml"),
                &Value::from(comm),
                &Value::from("/fixed")
            ),
            "the comm rules (comm = \"costprobe-*\") must fire for a process named {comm:?}; \
             tags = {tags}"
        );
        assert_eq!(
            tags["script"], "sse",
            "a cmdline rule fires on the process's command line: {tags}"
        );
    }
}

#[test]
fn a_comm_tag_rule_fires_in_attach() {
    require_kernel!();
    let comm = "costprobe-att";
    let (_exe, server) = python_named(comm);
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("10-tags.toml"), TAG_RULES).unwrap();
    let probe = Attach::start(
        server.proc.pid(),
        &["--rules", rules.path().to_str().unwrap()],
    );
    send_requests(server.port);
    let records = probe.stop();
    assert_comm_tags(&records, comm);
}

#[test]
fn the_builtin_ollama_tag_rule_fires_in_attach() {
    require_kernel!();
    // Not ollama: the test server under the name the built-in rule looks for. `/api/…` is a
    // 404 there, which is still a request the rule must label.
    let (_exe, server) = python_named("ollama");
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut c = Client::connect(server.port);
    for _ in 0..3 {
        assert_eq!(c.get("/api/tags").status, 404);
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(spans.len(), 3, "one record per request");
    for s in &spans {
        assert_eq!(s["http"]["path"], "/api/tags");
        assert_eq!(
            s["tags"]["endpoint"], "/api/tags",
            "built-in rule `path = \"/api/*\", comm = \"ollama*\"` must fire: {s}"
        );
    }
}

/// A running `cost-probe agent`, its stderr lines on a channel.
struct Agent {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(rules: &Path, out: &Path) -> Self {
        let mut child = Command::new(bin())
            .args(["agent", "--rules"])
            .arg(rules)
            .args(["--metrics", "off", "--discover", "200", "--output"])
            .arg(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {l}");
                let _ = tx.send(l);
            }
        });
        Self {
            proc: Proc { child },
            lines,
        }
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("agent did not print {needle:?} within {timeout:?}")
                }
            }
        }
    }

    fn stop(mut self, out: &Path) -> Records {
        // Let the held requests be priced (one energy interval) before the shutdown flush.
        thread::sleep(Duration::from_millis(300));
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status} on SIGTERM");
        let text = std::fs::read_to_string(out).unwrap();
        Records(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }
}

#[test]
fn a_comm_tag_rule_fires_in_agent() {
    require_kernel!();
    let comm = "costprobe-agt";
    let (_exe, server) = python_named(comm);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("10-targets.toml"),
        format!("[[target]]\nname = \"tagged\"\ncomm = \"{comm}\"\n"),
    )
    .unwrap();
    std::fs::write(rules.join("20-tags.toml"), TAG_RULES).unwrap();
    let out = dir.path().join("out.ndjson");
    let agent = Agent::start(&rules, &out);
    agent.wait_for(
        &format!("tracing pid {}", server.proc.pid()),
        Duration::from_secs(30),
    );
    send_requests(server.port);
    let records = agent.stop(&out);
    for s in records.requests() {
        assert_eq!(s["tags"]["target"], "tagged", "{s}");
    }
    assert_comm_tags(&records, comm);
}
