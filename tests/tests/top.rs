//! `cost-probe top` in a real terminal: tmux runs it against a real server, the test drives
//! requests, reads the screen with `capture-pane`, presses keys, and checks the exit and the
//! restored terminal. Run as root through `cargo xtask test`.
use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use cost_probe_tests::{Client, Server, bin, require_kernel};

/// A tmux server of our own (its own socket, no user config), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` when tmux is not installed (a skip outside CI).
    fn start(command: &str) -> Option<Self> {
        // One tmux server per session, so tests running side by side do not share one.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("cost-probe-top-{}-{n}", std::process::id());
        let t = Self { socket };
        let out = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null"])
            .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "40"])
            .arg(command)
            .env_remove("TMUX")
            .output()
            .ok()?;
        assert!(out.status.success(), "tmux new-session: {out:?}");
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        out
    }

    /// The visible pane, wrapped lines joined.
    fn pane(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-J", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "top", keys]);
    }

    /// Polls the pane until `f` holds; panics with the last pane after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.pane();
            if f(&pane) {
                return pane;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}; the pane:\n{pane}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn tmux_installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The row whose first column is `group`, split into columns.
fn row<'a>(pane: &'a str, group: &str) -> Option<Vec<&'a str>> {
    pane.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&group) && cols.len() >= 7)
}

const MODEL: &str = "top-test-model";
const REQUESTS: usize = 12;

#[test]
fn top_shows_live_groups_in_a_terminal_and_restores_it_on_q() {
    require_kernel!();
    if !tmux_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing on CI (cargo xtask setup --test-deps installs it)"
        );
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let server = Server::python_sse();
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.ndjson");
    let (tmux, title) = top_in_tmux(&server, &records);

    // A slow stream (no model: group `-`) is in flight, with its age, while it lasts.
    let port = server.port;
    let slow = thread::spawn(move || Client::connect(port).get("/stream?n=50&delay_ms=100"));
    let flying = tmux.wait_for("the slow request in flight", Duration::from_secs(4), |p| {
        p.contains("in flight 1   oldest: - ") && row(p, "-").is_some_and(|c| c[2] == "1")
    });
    eprintln!("in flight:\n{flying}");
    assert_eq!(slow.join().unwrap().status, 200);

    let mut client = Client::connect(server.port);
    for _ in 0..REQUESTS {
        let r = client.post_json(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{MODEL}","max_tokens":16,"stream":true}}"#),
        );
        assert_eq!(r.status, 200);
    }
    let count = REQUESTS.to_string();
    // The in-flight snapshot (every 500 ms) may trail the records by one.
    let pane = tmux.wait_for(
        "row with every request and none in flight",
        Duration::from_secs(15),
        |p| row(p, MODEL).is_some_and(|c| c[1] == count && c[2] == "0"),
    );
    eprintln!("the view:\n{pane}");
    let cols = row(&pane, MODEL).unwrap();
    // group, requests, in flight, $/min, J/request, $/request, p50 ms.
    let usd_per_min: f64 = cols[3].parse().unwrap();
    let joules: f64 = cols[4].parse().unwrap();
    assert!(usd_per_min > 0.0 || joules > 0.0, "{pane}");
    assert!(
        cols[6].parse::<f64>().unwrap() > 0.0,
        "p50 latency:\n{pane}"
    );
    let all = REQUESTS + 1;
    assert!(
        pane.contains(&format!("requests {all} (partial 0)")),
        "{pane}"
    );
    assert_eq!(row(&pane, "-").map(|c| c[1]), Some("1"), "{pane}");
    assert!(pane.contains("in flight 0"), "{pane}");
    let spark = pane
        .lines()
        .skip_while(|l| !l.contains("$ per second, last 60 s"))
        .nth(1)
        .unwrap_or_else(|| panic!("no sparkline:\n{pane}"));
    assert!(
        spark.chars().any(|c| ('▁'..='█').contains(&c)),
        "the sparkline has no bar:\n{pane}"
    );

    // `s` moves the sort to the next column.
    assert!(pane.contains("$/min▼"), "{pane}");
    tmux.keys("s");
    tmux.wait_for("sort by requests", Duration::from_secs(5), |p| {
        p.contains("requests▼")
    });

    tmux.keys("q");
    let after = tmux.wait_for("exit", Duration::from_secs(20), |p| p.contains("TOP-EXIT="));
    eprintln!("after q:\n{after}");
    assert!(after.contains("TOP-EXIT=0"), "{after}");
    // The terminal is back: the view's screen is gone, the summary is printed on it.
    assert!(
        !after.contains(&title),
        "the view is still on screen:\n{after}"
    );
    let summary = after
        .lines()
        .find(|l| l.contains(r#""type":"summary""#))
        .unwrap_or_else(|| panic!("no summary on the terminal:\n{after}"));
    assert!(
        summary.contains(&format!(r#""requests":{all}"#)),
        "{summary}"
    );
    // --output got every record too.
    let written = std::fs::read_to_string(&records).unwrap();
    let requests = written
        .lines()
        .filter(|l| l.contains(r#""type":"request""#) && l.contains(MODEL))
        .count();
    assert_eq!(requests, REQUESTS, "records in {}", records.display());
}

/// Starts `top` on `server` in tmux, keeping the shell (and the pane) after it exits.
fn top_in_tmux(server: &Server, output: &std::path::Path) -> (Tmux, String) {
    let command = format!(
        "{} top --pid {} --output {}; echo TOP-EXIT=$?; sleep 600",
        bin().display(),
        server.proc.pid(),
        output.display()
    );
    let tmux = Tmux::start(&command).expect("tmux runs");
    let title = format!("cost-probe top: pid {}", server.proc.pid());
    tmux.wait_for("view", Duration::from_secs(30), |p| p.contains(&title));
    (tmux, title)
}

#[test]
fn top_ends_with_its_target_and_restores_the_terminal() {
    require_kernel!();
    if !tmux_installed() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let server = Server::python_sse();
    let dir = tempfile::tempdir().unwrap();
    let (tmux, title) = top_in_tmux(&server, &dir.path().join("records.ndjson"));
    let mut client = Client::connect(server.port);
    assert_eq!(client.get("/fixed?size=10").status, 200);
    tmux.wait_for("the request", Duration::from_secs(15), |p| {
        row(p, "-").is_some_and(|c| c[1] == "1")
    });
    drop(client);
    server.proc.signal(libc::SIGKILL);
    let after = tmux.wait_for("exit", Duration::from_secs(20), |p| p.contains("TOP-EXIT="));
    assert!(after.contains("TOP-EXIT=0"), "{after}");
    assert!(
        !after.contains(&title),
        "the view is still on screen:\n{after}"
    );
    // What the run wrote to stderr while the view was up is printed once it is gone.
    assert!(
        after.contains(&format!("cost-probe: pid {} exited", server.proc.pid())),
        "{after}"
    );
    assert!(after.contains(r#""type":"summary""#), "{after}");
}

#[test]
fn top_refuses_a_stdout_that_is_not_a_terminal() {
    let out = Command::new(bin())
        .args(["top", "--pid", &std::process::id().to_string()])
        .output()
        .expect("running cost-probe");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not one"), "{err}");
}
