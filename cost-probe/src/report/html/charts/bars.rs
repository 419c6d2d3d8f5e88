//! Horizontal bar charts: $ per 1k tokens by model, and the budgets' positions.
use plotters::{
    coord::{
        ranged1d::SegmentedCoord,
        types::{RangedCoordf64, RangedCoordusize},
    },
    prelude::*,
};

use super::{Area, Drawn, FONT, GRID, PALETTE, empty, label, legend};
use crate::report::{Report, render::sig3, views::Views};

const MAX_BARS: usize = 10;

/// Horizontal bars, highest at the top, labelled with their value.
pub(super) fn tokens(area: &Area, title: &str, v: &Views) -> Drawn {
    let bars: Vec<&(String, f64)> = v.usd_per_1k_tokens.iter().take(MAX_BARS).collect();
    let Some(max) = bars.iter().map(|b| b.1).reduce(f64::max) else {
        return empty(area, title, "no priced requests reported tokens");
    };
    let n = bars.len();
    let row = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..max * 1.3, (0..n).into_segmented())?;
    let y_fmt = |s: &SegmentValue<usize>| match s {
        SegmentValue::CenterOf(i) if *i < n => label(&bars[row(*i)].0),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(5)
        .y_labels(n)
        .x_label_formatter(&|x| format!("${}", sig3(*x)))
        .y_label_formatter(&y_fmt)
        .x_desc("$ per 1k tokens (prompt + completion)")
        .label_style((FONT, 12))
        .light_line_style(GRID)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, x))| {
        let y = row(i);
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (*x, SegmentValue::Exact(y + 1)),
            ],
            PALETTE[i % PALETTE.len()].filled(),
        );
        r.set_margin(5, 5, 0, 0);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, x))| {
        Text::new(
            format!(" ${}", sig3(*x)),
            (*x, SegmentValue::CenterOf(row(i))),
            (FONT, 12),
        )
    }))?;
    Ok(())
}

/// One bar of the budget chart, in the chart's unit (a fraction of the budget, or $).
struct Position {
    name: String,
    spent: f64,
    projected: f64,
    low: Option<f64>,
    high: Option<f64>,
}

/// Each budget as a fraction of its amount; without budgets, all requests' month end in $.
fn positions(r: &Report) -> Vec<Position> {
    if r.budgets.is_empty() {
        r.month_end
            .iter()
            .map(|p| Position {
                name: "all requests".into(),
                spent: p.spent_usd,
                projected: p.projected_usd,
                low: p.projected_low_usd,
                high: p.projected_high_usd,
            })
            .collect()
    } else {
        r.budgets
            .iter()
            .map(|b| {
                let of = |x: f64| x / b.amount_usd;
                Position {
                    name: b.name.clone(),
                    spent: b.used,
                    projected: b.projected_used,
                    low: b.projection.projected_low_usd.map(of),
                    high: b.projection.projected_high_usd.map(of),
                }
            })
            .collect()
    }
}

/// Each budget's spend and projection as a fraction of its amount; without budgets, the month-end
/// projection of all requests in $.
pub(super) fn budget(area: &Area, title: &str, r: &Report) -> Drawn {
    let fraction = !r.budgets.is_empty();
    let rows = positions(r);
    if rows.is_empty() {
        return empty(area, title, "no records with a time");
    }
    let n = rows.len();
    let caption = if fraction {
        "budget position: spent, projected to period end (p10-p90)"
    } else {
        "month-end forecast (no [[budget]] rules)"
    };
    let max = rows
        .iter()
        .flat_map(|p| [Some(p.spent), Some(p.projected), p.high])
        .flatten()
        .fold(if fraction { 1.0 } else { 0.0 }, f64::max);
    let max = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(150)
        // n + 1 segments (a discrete range holds its end): the top one is the legend's.
        .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
    let x_fmt = |x: &f64| {
        if fraction {
            format!("{:.0}%", x * 100.0)
        } else {
            format!("${}", sig3(*x))
        }
    };
    let y_fmt = |s: &SegmentValue<usize>| match s {
        SegmentValue::CenterOf(i) if *i < n => label(&rows[n - 1 - *i].name),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_labels(6)
        .y_labels(n)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc(if fraction {
            "share of the budget"
        } else {
            "$ this month"
        })
        .label_style((FONT, 12))
        .light_line_style(GRID)
        .draw()?;
    marks(&mut chart, &rows, fraction)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

type Rows<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, SegmentedCoord<RangedCoordusize>>>;

/// The bars, ranges and projection dots of each row, and the 100 % line when rows are budgets.
fn marks(chart: &mut Rows, rows: &[Position], fraction: bool) -> Drawn {
    let n = rows.len();
    let bar = |from: f64, to: f64, y: usize, style: ShapeStyle| {
        let mut r = Rectangle::new(
            [
                (from, SegmentValue::Exact(y)),
                (to, SegmentValue::Exact(y + 1)),
            ],
            style,
        );
        r.set_margin(8, 8, 0, 0);
        r
    };
    let (spent_c, ahead_c) = (PALETTE[0], PALETTE[0].mix(0.35));
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .map(|(i, p)| bar(0.0, p.spent, n - 1 - i, spent_c.filled())),
        )?
        .label("spent")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], spent_c.filled()));
    chart
        .draw_series(rows.iter().enumerate().map(|(i, p)| {
            bar(
                p.spent,
                p.projected.max(p.spent),
                n - 1 - i,
                ahead_c.filled(),
            )
        }))?
        .label("projected")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], ahead_c.filled()));
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, p)| {
            let y = SegmentValue::CenterOf(n - 1 - i);
            Some(PathElement::new(
                vec![(p.low?, y.clone()), (p.high?, y)],
                BLACK.stroke_width(2),
            ))
        }))?
        .label("p10-p90")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK.stroke_width(2)));
    chart.draw_series(rows.iter().enumerate().map(|(i, p)| {
        Circle::new(
            (p.projected, SegmentValue::CenterOf(n - 1 - i)),
            4,
            BLACK.filled(),
        )
    }))?;
    if fraction {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
                PALETTE[3].stroke_width(2),
            )))?
            .label("budget")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x + 6, y - 6), (x + 6, y + 6)],
                    PALETTE[3].stroke_width(2),
                )
            });
    }
    Ok(())
}
