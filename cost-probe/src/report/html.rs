//! `report --html`: the report as one self-contained page. No script, no external resource
//! (a Content-Security-Policy of `default-src 'none'` says so to the browser too), the charts as
//! inline SVG on a fixed grid above the same tables the terminal prints.
//!
//! Tags, models, paths and budget names come from records and rules that anyone who can send a
//! request to the traced server influences. maud escapes every interpolated string; the only
//! markup let through unescaped is plotters' SVG, which escapes its own text.
mod charts;

use maud::{DOCTYPE, Markup, PreEscaped, html};

pub use charts::{ChartError, HEIGHT as CHART_HEIGHT, WIDTH as CHART_WIDTH};

use super::{Report, render};

/// Height of the page header above the charts.
pub const HEADER_HEIGHT: u32 = 96;
/// Charts per row of the grid.
pub const COLUMNS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("the report was read without views (Aggregator::with_views)")]
    NoViews,
    #[error(transparent)]
    Chart(#[from] ChartError),
}

const CSS: &str = "\
body{margin:0;font:14px/1.4 sans-serif;color:#222;background:#fff}\
header{box-sizing:border-box;height:96px;overflow:hidden;padding:10px 16px}\
h1{font-size:20px;margin:0 0 4px}\
h2{font-size:16px;margin:24px 0 8px}\
header p{margin:0}\
figure{position:absolute;margin:0;overflow:hidden}\
main{padding:0 16px 24px}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}\
th,td{padding:2px 10px;text-align:left;white-space:nowrap}\
th{border-bottom:1px solid #999}\
.num{text-align:right}\
table.groups tbody tr:last-child td{border-top:1px solid #999;font-weight:bold}\
p.note{color:#555}";

/// Where chart `i` sits on the page, in CSS pixels from the top left corner.
#[must_use]
pub fn chart_position(i: usize) -> (u32, u32) {
    let (i, cols) = (i as u32, COLUMNS);
    (
        (i % cols) * charts::WIDTH,
        HEADER_HEIGHT + (i / cols) * charts::HEIGHT,
    )
}

fn table(rows: &[Vec<String>], text_columns: usize, class: &str) -> Markup {
    let Some((head, body)) = rows.split_first() else {
        return html! {};
    };
    html! {
        table class=(class) {
            thead { tr { @for (c, h) in head.iter().enumerate() { th.num[c >= text_columns] { (h) } } } }
            tbody {
                @for row in body {
                    tr { @for (c, v) in row.iter().enumerate() { td.num[c >= text_columns] { (v) } } }
                }
            }
        }
    }
}

/// The page. The report must come from an aggregator made [`super::Aggregator::with_views`].
pub fn page(r: &Report) -> Result<String, HtmlError> {
    let views = r.views.as_ref().ok_or(HtmlError::NoViews)?;
    let charts = charts::all(r, views)?;
    let rows = charts.len().div_ceil(COLUMNS as usize) as u32;
    let energy = render::energy_lines(r);
    let top = render::top_rows(r);
    let t = &r.totals;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "cost-probe report" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "cost-probe report" }
                    p { (render::headline(r)) }
                    p {
                        "cost " (render::usd(Some(t.cost_usd)))
                        ", energy to requests " (render::sig3(t.attributed_j)) " J"
                        ", idle waste " (render::sig3(t.idle_j)) " J (" (render::usd(Some(t.idle_usd))) ")"
                        ", $/1k tokens " (render::usd(t.usd_per_1k_tokens))
                    }
                }
                // The figures are placed on the page, not in this box: it only keeps their room.
                div.charts style=(format!("height:{}px;width:{}px", rows * charts::HEIGHT, COLUMNS * charts::WIDTH)) {
                    @for (i, c) in charts.iter().enumerate() {
                        @let (x, y) = chart_position(i);
                        figure id=(c.id) aria-label=(c.title) style=(format!(
                            "left:{x}px;top:{y}px;width:{}px;height:{}px", charts::WIDTH, charts::HEIGHT
                        )) {
                            (PreEscaped(&c.svg))
                        }
                    }
                }
                main {
                    h2 { "By " (r.by.join(", ")) }
                    (table(&render::group_rows(r), r.by.len(), "groups"))
                    h2 { "Energy and idle waste" }
                    @for l in &energy { p { (l) } }
                    @if top.len() > 1 {
                        h2 { "Most expensive requests" }
                        (table(&top, render::TOP_TEXT_COLUMNS, "top"))
                    }
                    h2 { "Cache opportunity" }
                    p { (render::cache_heading(r)) }
                    @let cache = render::cache_rows(r);
                    @if !cache.is_empty() {
                        (table(&cache, r.by.len(), "cache"))
                    }
                    @for l in render::cache_lines(r) { p { (l) } }
                    @if let Some(total) = &r.month_end {
                        h2 { "Forecast" }
                        p { (render::forecast_heading(total)) }
                        (table(&render::forecast_rows(r), r.by.len(), "forecast"))
                        @for l in render::budget_lines(r) { p { (l) } }
                        p.note { "method: " (r.forecast_method) }
                    }
                }
            }
        }
    };
    Ok(markup.into_string())
}

#[cfg(test)]
mod tests;
