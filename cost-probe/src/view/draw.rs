//! Drawing the live view: a header with totals, the in-flight line, the group table and a
//! sparkline of spend per second. Reads a [`Live`]; owns no state.
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Sparkline, Table},
};

use super::{Live, Row, SortBy, WINDOW_SECS};

/// Oldest in-flight requests listed by age.
const OLDEST: usize = 3;

/// What the view says about the run beside the records: the title and the last message the
/// run wrote to stderr.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub title: String,
    pub message: Option<String>,
}

/// A dollar amount with three significant figures (a request costs micro-dollars, a fleet
/// hundreds), never in exponent notation.
#[must_use]
pub fn usd(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    format!("{v:.decimals$}")
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

fn cells(r: &Row) -> [String; 7] {
    [
        r.group.clone(),
        r.requests.to_string(),
        r.in_flight.to_string(),
        usd(r.usd_per_min),
        opt(r.joules_per_request, |j| format!("{j:.3}")),
        opt(r.usd_per_request, usd),
        opt(r.p50_ms, |ms| format!("{ms:.1}")),
    ]
}

/// Draws the view of `live` at unix ns `now` into the frame.
pub fn draw(frame: &mut Frame<'_>, live: &Live, ctx: &Context, now: i64) {
    let [title, header, in_flight, table, spark, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    frame.render_widget(Paragraph::new(Line::styled(ctx.title.clone(), bold)), title);
    frame.render_widget(Paragraph::new(header_lines(live, now)), header);
    let oldest: Vec<String> = live
        .oldest_in_flight(OLDEST)
        .into_iter()
        .map(|(g, age)| format!("{g} {age:.1} s"))
        .collect();
    let mut flying = format!("in flight {}", live.in_flight_count());
    if !oldest.is_empty() {
        flying.push_str("   oldest: ");
        flying.push_str(&oldest.join(", "));
    }
    frame.render_widget(Paragraph::new(flying), in_flight);
    frame.render_widget(group_table(live, now), table);

    let series = live.spend_series(now);
    let max = series.iter().copied().fold(0.0, f64::max);
    // Sparkline bars are integers: nano-dollars keep a micro-dollar request visible.
    let data: Vec<u64> = series.iter().map(|v| (v * 1e9).round() as u64).collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::TOP).title(format!(
                " $ per second, last {WINDOW_SECS} s (max $ {}/s) ",
                usd(max)
            )))
            .data(&data),
        spark,
    );
    let keys = format!("q quit   s sort (by {})", live.sort.header());
    let foot = match &ctx.message {
        Some(m) => format!("{keys}   | {m}"),
        None => keys,
    };
    frame.render_widget(Paragraph::new(foot), footer);
}

/// Totals since the start, the recent rate, idle and losses.
fn header_lines(live: &Live, now: i64) -> Vec<Line<'static>> {
    let t = live.totals();
    let window = live.window_secs(now);
    let mut lines = vec![
        Line::from(format!(
            "requests {} (partial {})   $ {} since start   $/min {} (last {window:.0} s)   energy {:.3} J",
            t.requests,
            t.partial,
            usd(t.cost_usd),
            usd(live.usd_per_min(now)),
            t.energy_j,
        )),
        Line::from(format!(
            "idle {:.2} W   idle {:.3} J, $ {} so far   lost events {}",
            t.idle_w,
            t.idle_j,
            usd(t.idle_usd),
            t.lost_events
        )),
    ];
    if t.dropped + t.unreadable > 0 {
        lines[1].push_span(format!(
            "   view missed {} records",
            t.dropped + t.unreadable
        ));
    }
    lines
}

/// The group table, its sort column marked.
fn group_table(live: &Live, now: i64) -> Table<'static> {
    let window = live.window_secs(now);
    let by: Vec<&str> = live.by().iter().map(super::GroupKey::name).collect();
    let group_header = by.join(" / ");
    let sort = live.sort;
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let heads = [
        (group_header.as_str(), None),
        ("requests", Some(SortBy::Requests)),
        ("in flight", Some(SortBy::InFlight)),
        ("$/min", Some(SortBy::UsdPerMin)),
        ("J/request", Some(SortBy::JoulesPerRequest)),
        ("$/request", Some(SortBy::UsdPerRequest)),
        ("p50 ms", Some(SortBy::P50)),
    ];
    let header_row = TableRow::new(heads.map(|(name, key)| {
        if key == Some(sort) {
            Cell::from(format!("{name}▼"))
        } else {
            Cell::from(name.to_owned())
        }
    }))
    .style(bold);
    let rows = live.rows(now);
    // As wide as the longest group name, so the numbers sit beside it on a wide terminal.
    let group_width = rows
        .iter()
        .map(|r| r.group.chars().count())
        .chain([group_header.chars().count(), 12])
        .max()
        .unwrap_or(12)
        .min(64) as u16
        + 2;
    let rows = rows.into_iter().map(|r| TableRow::new(cells(&r)));
    let widths = [
        Constraint::Length(group_width),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(10),
    ];
    Table::new(rows, widths)
        .header(header_row)
        .block(Block::default().borders(Borders::TOP).title(format!(
            " by {group_header}, $/min over the last {window:.0} s "
        )))
}
