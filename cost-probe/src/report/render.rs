//! The terminal table. Figures keep three significant digits: request costs span from 1e-9 $
//! (a CPU-only demo) to dollars (a long GPU generation), so fixed decimals would hide one end.
use std::fmt::Write as _;

use super::Report;

/// A number to three significant digits, plain where that reads well and in e-notation where
/// plain would need more than four leading zeros.
#[must_use]
pub fn sig3(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-4..1e6).contains(&a) {
        return format!("{x:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), sig3)
}

pub(super) fn usd(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("${}", sig3(v)))
}

pub(super) fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// Columns left-aligned for the first `left` of them, right-aligned after.
fn grid(out: &mut String, rows: &[Vec<String>], left: usize) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = width[c] - cell.chars().count();
            if c < left {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The line above the table: counts, window and grouping.
pub(super) fn headline(r: &Report) -> String {
    let t = &r.totals;
    format!(
        "{} requests ({} priced), {} … {}, by {}",
        t.requests,
        t.priced_requests,
        r.from.as_deref().unwrap_or("-"),
        r.to.as_deref().unwrap_or("-"),
        r.by.join(",")
    )
}

/// The header, one row per group and the total row. The first `r.by.len()` columns are text.
pub(super) fn group_rows(r: &Report) -> Vec<Vec<String>> {
    let t = &r.totals;
    let mut rows = vec![
        r.by.iter()
            .cloned()
            .chain(
                [
                    "requests", "p50 ms", "p99 ms", "TTFT p50", "J/req", "$/req", "$/1k tok",
                    "CO2 g", "cost", "share",
                ]
                .map(String::from),
            )
            .collect::<Vec<_>>(),
    ];
    for g in &r.groups {
        let mut row = g.key.clone();
        row.extend([
            g.requests.to_string(),
            opt(g.latency_p50_ms),
            opt(g.latency_p99_ms),
            opt(g.ttft_p50_ms),
            opt(g.j_per_request),
            usd(g.usd_per_request),
            usd(g.usd_per_1k_tokens),
            sig3(g.co2_g),
            usd(Some(g.cost_usd)),
            pct(g.share),
        ]);
        rows.push(row);
    }
    let mut total = total_key(r);
    let per_req = (t.priced_requests > 0).then(|| t.cost_usd / t.priced_requests as f64);
    let j_per_req = (t.priced_requests > 0).then(|| t.energy_j / t.priced_requests as f64);
    total.extend([
        t.requests.to_string(),
        String::new(),
        String::new(),
        String::new(),
        opt(j_per_req),
        usd(per_req),
        usd(t.usd_per_1k_tokens),
        sig3(t.co2_g),
        usd(Some(t.cost_usd)),
        if t.cost_usd > 0.0 {
            "100.0%".into()
        } else {
            "-".into()
        },
    ]);
    rows.push(total);
    rows
}

/// `total` in the first key column, the other key columns empty.
fn total_key(r: &Report) -> Vec<String> {
    let mut key = vec!["total".to_owned()];
    key.extend(std::iter::repeat_n(
        String::new(),
        r.by.len().saturating_sub(1),
    ));
    key
}

/// The report as a terminal table: one row per group, the totals, idle waste, lost events, and
/// the most expensive requests.
#[must_use]
pub fn table(r: &Report) -> String {
    let mut out = headline(r);
    out.push_str("\n\n");
    grid(&mut out, &group_rows(r), r.by.len());
    out.push('\n');
    for l in energy_lines(r) {
        out.push_str(&l);
        out.push('\n');
    }
    let top = top_rows(r);
    if top.len() > 1 {
        let _ = writeln!(out, "\nmost expensive requests:");
        grid(&mut out, &top, TOP_TEXT_COLUMNS);
    }
    cache(&mut out, r);
    forecast(&mut out, r);
    out
}

/// Repeated requests, exact match only, per group and in total.
fn cache(out: &mut String, r: &Report) {
    let _ = writeln!(out, "\n{}", cache_heading(r));
    let rows = cache_rows(r);
    if !rows.is_empty() {
        grid(out, &rows, r.by.len());
    }
    for l in cache_lines(r) {
        out.push_str(&l);
        out.push('\n');
    }
}

pub(super) fn cache_heading(r: &Report) -> &'static str {
    if r.cache_opportunity.hashed_requests == 0 {
        "cache opportunity: no request carries a request_hash"
    } else {
        "cache opportunity (exact match only: same method, target and body; headers left out):"
    }
}

/// The header, each group with hashed requests (most repeat $ first) and the total; empty when
/// no request carries a hash.
pub(super) fn cache_rows(r: &Report) -> Vec<Vec<String>> {
    let c = &r.cache_opportunity;
    if c.hashed_requests == 0 {
        return Vec::new();
    }
    let mut rows = vec![
        r.by.iter()
            .cloned()
            .chain(["hashed", "repeats", "repeat $", "repeat J"].map(String::from))
            .collect::<Vec<_>>(),
    ];
    let mut groups: Vec<_> = c.groups.iter().filter(|g| g.hashed_requests > 0).collect();
    groups.sort_by(|a, b| {
        b.repeat_usd
            .total_cmp(&a.repeat_usd)
            .then_with(|| a.key.cmp(&b.key))
    });
    let row = |key: Vec<String>, hashed: u64, repeats: u64, usd_: f64, j: f64| {
        let mut v = key;
        v.extend([
            hashed.to_string(),
            repeats.to_string(),
            usd(Some(usd_)),
            sig3(j),
        ]);
        v
    };
    for g in groups {
        rows.push(row(
            g.key.clone(),
            g.hashed_requests,
            g.repeats,
            g.repeat_usd,
            g.repeat_j,
        ));
    }
    rows.push(row(
        total_key(r),
        c.hashed_requests,
        c.repeats,
        c.repeat_usd,
        c.repeat_j,
    ));
    rows
}

/// The repeats' share of cost, and what the hash cap left unknown.
pub(super) fn cache_lines(r: &Report) -> Vec<String> {
    let c = &r.cache_opportunity;
    if c.hashed_requests == 0 {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "repeats cost {} of all requests' cost",
        pct(c.share_of_cost)
    )];
    if c.unknown > 0 {
        lines.push(format!(
            "{} requests not told first or repeat: more than {} distinct hashes",
            c.unknown, c.distinct_cap
        ));
    }
    lines
}

/// The forecast's heading: the month end it projects to.
pub(super) fn forecast_heading(total: &super::Projection) -> String {
    format!(
        "forecast to {} (this month so far and the observed rate):",
        total.period_end
    )
}

/// The header, each group's month-end projection and the total's; empty without a window.
pub(super) fn forecast_rows(r: &Report) -> Vec<Vec<String>> {
    let Some(total) = &r.month_end else {
        return Vec::new();
    };
    let mut rows = vec![
        r.by.iter()
            .cloned()
            .chain(["spent", "$/hour", "month end", "low", "high"].map(String::from))
            .collect::<Vec<_>>(),
    ];
    let row = |key: Vec<String>, p: &super::Projection| {
        let mut v = key;
        v.extend([
            usd(Some(p.spent_usd)),
            usd(Some(p.usd_per_hour)),
            usd(Some(p.projected_usd)),
            usd(p.projected_low_usd),
            usd(p.projected_high_usd),
        ]);
        v
    };
    for g in &r.groups {
        if let Some(p) = &g.month_end {
            rows.push(row(g.key.clone(), p));
        }
    }
    rows.push(row(total_key(r), total));
    rows
}

/// One line per budget: its period, amount, spend and projection.
pub(super) fn budget_lines(r: &Report) -> Vec<String> {
    r.budgets
        .iter()
        .map(|b| {
            format!(
                "budget {} ({} … {}, {}): spent {} ({}), projected {} ({}; {} to {})",
                b.name,
                b.projection.period_start,
                b.projection.period_end,
                usd(Some(b.amount_usd)),
                usd(Some(b.projection.spent_usd)),
                pct(Some(b.used)),
                usd(Some(b.projection.projected_usd)),
                pct(Some(b.projected_used)),
                usd(b.projection.projected_low_usd),
                usd(b.projection.projected_high_usd),
            )
        })
        .collect()
}

/// Month-end projections per group and in total, and each budget's position.
fn forecast(out: &mut String, r: &Report) {
    let Some(total) = &r.month_end else {
        return;
    };
    let _ = writeln!(out, "\n{}", forecast_heading(total));
    grid(out, &forecast_rows(r), r.by.len());
    for l in budget_lines(r) {
        out.push_str(&l);
        out.push('\n');
    }
    let _ = writeln!(out, "method: {}", r.forecast_method);
}

/// Energy over the intervals, idle waste, lost events and records left out.
pub(super) fn energy_lines(r: &Report) -> Vec<String> {
    let t = &r.totals;
    let idle_share =
        (t.cost_usd + t.idle_usd > 0.0).then(|| t.idle_usd / (t.cost_usd + t.idle_usd));
    let mut lines = vec![
        format!(
            "energy over {} intervals: {} J to requests, {} J idle, {} J other processes (not priced)",
            t.intervals,
            sig3(t.attributed_j),
            sig3(t.idle_j),
            sig3(t.other_j)
        ),
        format!(
            "idle waste: {} J, {} ({} of requests + idle)",
            sig3(t.idle_j),
            usd(Some(t.idle_usd)),
            pct(idle_share)
        ),
        format!(
            "egress: {} bytes out, {} (part of cost)",
            t.bytes_out,
            usd(Some(t.egress_usd))
        ),
        format!(
            "lost events: {}; partial requests: {}",
            t.lost_events, t.partial_requests
        ),
    ];
    if t.outside_window > 0 {
        lines.push(format!(
            "left out by --since/--until: {} records",
            t.outside_window
        ));
    }
    lines
}

/// The text columns of [`top_rows`] (the rest are numbers).
pub(super) const TOP_TEXT_COLUMNS: usize = 5;

/// The header and one row per most expensive request (the header alone when there are none).
pub(super) fn top_rows(r: &Report) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "cost", "start", "group", "model", "path", "ms", "tokens", "J",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for q in &r.top {
        rows.push(vec![
            usd(Some(q.cost_usd)),
            q.start.clone(),
            q.group.join(","),
            q.model.clone().unwrap_or_else(|| "-".into()),
            q.path.clone().unwrap_or_else(|| "-".into()),
            sig3(q.duration_ms),
            q.tokens.map_or_else(|| "-".into(), |n| n.to_string()),
            opt(q.energy_j),
        ]);
    }
    rows
}
