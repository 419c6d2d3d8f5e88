//! `report --html` in a real browser (#13): the page made from a real run's records (the
//! report's golden fixture), plus one request whose strings are markup, opened by headless
//! Chromium with a screenshot, the DOM after load, the console on stderr and a net log.
//!
//! The page passes when: no console message (the page has no script, so any message is a CSP
//! violation or a load error); no request that the page started, read from the net log (the
//! browser's own update and account requests are started by no origin and are left out); each
//! chart's figure in the DOM at the place the page states, with one SVG and its shapes; the
//! screenshot's region of each figure holding data pixels (palette colours, not the grey of axes
//! and text); and no `<script>` or `<img>` element in the DOM.
//!
//! The checks are shown to fail first: on a page with a console message and an outside image
//! (so a Chromium whose logs or net log changed shape cannot pass silently), and on the report
//! with one chart's SVG emptied.
//!
//! Chromium: `chromium` on PATH, or `CHROMIUM=/path`. Without it the test is skipped, unless
//! `CI` is set, where it fails (`cargo xtask setup --test-deps` installs it).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use cost_probe_tests::{bin, workspace};
use serde_json::Value;

/// Tall enough for the charts, the tables and the cache opportunity of the fixture's report, so
/// the screenshot kept as docs/report.png shows them (the forecast's last rows fall below it).
const WINDOW: (u32, u32) = (1280, 2100);
const CHARTS: [&str; 6] = [
    "chart-cost",
    "chart-energy",
    "chart-tokens",
    "chart-latency",
    "chart-joules",
    "chart-budget",
];
/// Palette pixels a chart's region must hold: 2.5 % of a 640 × 320 chart. On the fixture the
/// sparsest (the budget's) has about 20,000; an axes-only chart has none.
const MIN_DATA_PIXELS: usize = 5000;
/// Shapes (rect, polygon, polyline, path, circle) a chart's SVG must hold: the frame and mesh
/// alone are more than this, so it only catches an empty or cut-off SVG.
const MIN_SHAPES: usize = 10;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// What one page load showed.
struct Load {
    dom: String,
    console: Vec<String>,
    requests: Vec<String>,
    shot: PathBuf,
}

fn load(chromium: &Path, dir: &Path, page: &Path, name: &str) -> Load {
    let shot = dir.join(format!("{name}.png"));
    let netlog = dir.join(format!("{name}.netlog.json"));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            // Console messages go to stderr as `…:INFO:CONSOLE:LINE] "message", source: …`.
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("{name}.profile")).display()
        ))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed on {name}: {stderr}");
    Load {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console: stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_owned)
            .collect(),
        requests: page_requests(&netlog),
        shot,
    }
}

/// The URLs whose requests the page started. Chromium's own requests (component updates,
/// accounts, spelling dictionaries) have no initiating origin; a file:// page's have `null`.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).unwrap();
    let log: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e})", netlog.display()));
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the net log names its event types");
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start))
        .filter_map(|e| {
            let p = &e["params"];
            let from_page = p["initiator"]
                .as_str()
                .is_some_and(|i| i != "not an origin")
                || p["network_isolation_key"]
                    .as_str()
                    .is_some_and(|k| k.contains("file://"));
            from_page.then(|| p["url"].as_str().unwrap_or("?").to_owned())
        })
        .collect()
}

/// A chart's figure as the DOM has it.
struct Figure {
    id: String,
    /// left, top, width, height in CSS pixels.
    rect: [u32; 4],
    svgs: usize,
    shapes: usize,
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

fn figures(dom: &str) -> Vec<Figure> {
    dom.split("<figure")
        .skip(1)
        .map(|rest| {
            let (tag, body) = rest.split_once('>').unwrap();
            let body = body.split("</figure>").next().unwrap();
            let style = attr(tag, "style").unwrap_or_default();
            let px = |key: &str| -> u32 {
                style
                    .split(';')
                    .find_map(|d| d.trim().strip_prefix(key)?.strip_suffix("px")?.parse().ok())
                    .unwrap_or_else(|| panic!("{key} in {style:?}"))
            };
            Figure {
                id: attr(tag, "id").unwrap_or_default().to_owned(),
                rect: [px("left:"), px("top:"), px("width:"), px("height:")],
                svgs: body.matches("<svg").count(),
                shapes: ["<rect", "<polygon", "<polyline", "<path", "<circle"]
                    .iter()
                    .map(|s| body.matches(s).count())
                    .sum(),
            }
        })
        .collect()
}

/// The screenshot as RGB rows.
struct Shot {
    width: usize,
    height: usize,
    channels: usize,
    bytes: Vec<u8>,
}

fn decode(path: &Path) -> Shot {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut bytes = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut bytes).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    bytes.truncate(info.buffer_size());
    Shot {
        width: info.width as usize,
        height: info.height as usize,
        channels: info.color_type.samples(),
        bytes,
    }
}

impl Shot {
    /// Pixels in the rectangle whose channels differ by more than 40: colour, where the axes,
    /// grid and text are grey and the background white.
    fn data_pixels(&self, [x, y, w, h]: [u32; 4]) -> usize {
        let (x0, y0) = (x as usize, y as usize);
        let (x1, y1) = (
            (x0 + w as usize).min(self.width),
            (y0 + h as usize).min(self.height),
        );
        (y0..y1)
            .flat_map(|row| (x0..x1).map(move |col| (row, col)))
            .filter(|(row, col)| {
                let at = (row * self.width + col) * self.channels;
                let px = &self.bytes[at..at + 3];
                px.iter().max().unwrap() - px.iter().min().unwrap() > 40
            })
            .count()
    }
}

/// Everything wrong with one load of the report, with the figures found.
fn problems(load: &Load) -> (Vec<String>, Vec<(String, usize)>) {
    let mut bad = Vec::new();
    if !load.console.is_empty() {
        bad.push(format!("console: {:?}", load.console));
    }
    if !load.requests.is_empty() {
        bad.push(format!("requests: {:?}", load.requests));
    }
    let lower = load.dom.to_ascii_lowercase();
    for element in ["<script", "<img", "<iframe", "<object", "<link"] {
        if lower.contains(element) {
            bad.push(format!("a {element}> element in the DOM"));
        }
    }
    let shot = decode(&load.shot);
    assert_eq!(
        (shot.width, shot.height),
        (WINDOW.0 as usize, WINDOW.1 as usize),
        "screenshot size"
    );
    let found = figures(&load.dom);
    let mut seen = Vec::new();
    for id in CHARTS {
        let Some(f) = found.iter().find(|f| f.id == id) else {
            bad.push(format!("{id}: no figure"));
            continue;
        };
        let [left, top, width, height] = f.rect;
        if left + width > WINDOW.0 || top + height > WINDOW.1 {
            bad.push(format!("{id}: at {:?}, outside the screenshot", f.rect));
        }
        if f.svgs != 1 || f.shapes < MIN_SHAPES {
            bad.push(format!("{id}: {} svg, {} shapes", f.svgs, f.shapes));
        }
        let data = shot.data_pixels(f.rect);
        if data < MIN_DATA_PIXELS {
            bad.push(format!("{id}: {data} data pixels"));
        }
        seen.push((id.to_owned(), data));
    }
    (bad, seen)
}

/// The first request of the fixture, its strings replaced by markup that would load, run or
/// restyle something if it reached the page unescaped.
fn hostile(fixture: &str) -> String {
    let mut r: Value = fixture
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "request")
        .unwrap();
    r["tags"]["team"] = "<script>console.error('team')</script>".into();
    r["model"] = "<img src=\"http://127.0.0.1:9/model.png\">".into();
    r["http"]["path"] =
        "/\"></figure><style>body{background:url(http://127.0.0.1:9/p)}</style>".into();
    r.to_string()
}

#[test]
fn html_report_opens_in_a_browser_with_every_chart_drawn_and_nothing_loaded() {
    let Some(chromium) = chromium() else {
        assert!(
            !in_ci(),
            "chromium is not installed (cargo xtask setup --test-deps installs it)"
        );
        eprintln!("SKIPPED: chromium is not on PATH (set CHROMIUM=/path, or install it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();

    // The detectors, on a page that breaks both rules.
    let canary = tmp.join("canary.html");
    std::fs::write(
        &canary,
        "<!DOCTYPE html><p>x</p><img src=\"http://127.0.0.1:9/canary.png\">\
         <script>console.error('canary')</script>",
    )
    .unwrap();
    let canary = load(&chromium, tmp, &canary, "canary");
    assert!(
        canary.console.iter().any(|l| l.contains("canary")),
        "no console line for console.error: chromium's log format changed?"
    );
    assert!(
        canary.requests.iter().any(|u| u.ends_with("/canary.png")),
        "no page request in the net log: {:?}",
        canary.requests
    );

    // The report of the fixture, with a budget so that chart has bars, and a hostile record.
    let fixture_path = workspace().join("cost-probe/tests/fixtures/report/demo.ndjson");
    let fixture = std::fs::read_to_string(&fixture_path).unwrap();
    let records = tmp.join("records.ndjson");
    std::fs::write(&records, format!("{fixture}{}\n", hostile(&fixture))).unwrap();
    let rules = tmp.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("budget.toml"),
        "[[budget]]\nname = \"search-daily\"\nperiod = \"day\"\namount_usd = 0.01\n\
         tags = { team = \"search\" }\n\n\
         [[budget]]\nname = \"all-monthly\"\nperiod = \"month\"\namount_usd = 1.5\n",
    )
    .unwrap();
    let page = tmp.join("report.html");
    let started = Instant::now();
    let out = Command::new(bin())
        .args(["report", "--by", "team,model", "--rules"])
        .arg(&rules)
        .arg("--html")
        .arg(&page)
        .arg(&records)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    eprintln!(
        "report --html: {} bytes in {:.0} ms",
        html.len(),
        took.as_secs_f64() * 1e3
    );
    let report = load(&chromium, tmp, &page, "report");
    let (bad, seen) = problems(&report);
    eprintln!("data pixels per chart: {seen:?}");
    assert!(bad.is_empty(), "{bad:#?}");
    // The hostile strings are on the page, as text.
    assert!(report.dom.contains("&lt;script&gt;console.error('team')"));
    if let Some(keep) = std::env::var_os("REPORT_HTML_SCREENSHOT") {
        std::fs::copy(&report.shot, keep).unwrap();
    }

    // The same page with the latency chart's SVG emptied must fail, on that chart alone.
    let at = html.find("id=\"chart-latency\"").unwrap();
    let (from, to) = (
        at + html[at..].find("<svg").unwrap(),
        at + html[at..].find("</svg>").unwrap() + "</svg>".len(),
    );
    let cut = tmp.join("cut.html");
    std::fs::write(
        &cut,
        format!(
            "{}<svg width=\"640\" height=\"320\"></svg>{}",
            &html[..from],
            &html[to..]
        ),
    )
    .unwrap();
    let (bad, _) = problems(&load(&chromium, tmp, &cut, "cut"));
    assert!(
        !bad.is_empty() && bad.iter().all(|p| p.starts_with("chart-latency:")),
        "{bad:#?}"
    );
}
