//! The latency and J-per-request distributions.
use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::{Area, Drawn, FONT, GRID, PALETTE, empty, legend};
use crate::report::render::sig3;

const HIST_BINS: usize = 30;

/// An HDR histogram redrawn as counts in log-spaced bins, with its p50 and p99 marked.
pub(super) fn distribution(
    area: &Area,
    title: &str,
    h: &Histogram<u64>,
    scale: f64,
    x_desc: &str,
    color: RGBColor,
) -> Drawn {
    if h.is_empty() {
        return empty(area, title, "no requests with this figure");
    }
    let (mut lo, mut hi) = (h.min().max(1) as f64 / scale, h.max() as f64 / scale);
    // Room either side, and a range wide enough for a log axis to have ticks.
    lo /= 1.1;
    hi *= 1.1;
    if hi < lo * 4.0 {
        lo /= 2.0;
        hi *= 2.0;
    }
    let ratio = (hi / lo).ln();
    let edge = |i: usize| lo * (ratio * i as f64 / HIST_BINS as f64).exp();
    let mut counts = [0u64; HIST_BINS];
    for it in h.iter_recorded() {
        let x = it.value_iterated_to() as f64 / scale;
        let i = ((x / lo).ln() / ratio * HIST_BINS as f64).floor();
        counts[(i.max(0.0) as usize).min(HIST_BINS - 1)] += it.count_at_value();
    }
    let ymax = counts.iter().copied().max().unwrap_or(1) as f64 * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(54)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(ticks(lo, hi)),
            0.0..ymax,
        )?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|x| short(*x))
        // Counts are whole: no label on a tick between two.
        .y_label_formatter(&|y| {
            if y.fract() == 0.0 {
                format!("{y:.0}")
            } else {
                String::new()
            }
        })
        .x_desc(x_desc)
        .y_desc("requests")
        .label_style((FONT, 12))
        .light_line_style(GRID)
        .draw()?;
    chart.draw_series(
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let mut r =
                    Rectangle::new([(edge(i), 0.0), (edge(i + 1), *c as f64)], color.filled());
                r.set_margin(0, 0, 1, 1);
                r
            }),
    )?;
    for (q, name, c) in [(0.5, "p50", BLACK), (0.99, "p99", PALETTE[3])] {
        let x = h.value_at_quantile(q) as f64 / scale;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, ymax)],
                c.stroke_width(2),
            )))?
            .label(format!("{name} {}", sig3(x)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

/// A tick value without trailing zeros (`90`, `0.002`).
fn short(x: f64) -> String {
    let s = sig3(x);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// 1-2-5 ticks within `[lo, hi]`, every digit where that gives fewer than four, the powers of
/// ten where it gives more than ten. plotters' own log ticks are the powers of ten, often none
/// or one in a histogram's range.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let pick = |digits: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|d| digits.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|x| (lo..=hi).contains(x))
            .collect()
    };
    let coarse = pick(&[1.0, 2.0, 5.0]);
    match coarse.len() {
        0..4 => pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        // Labels past about ten would overlap on a 640 px axis.
        11.. => pick(&[1.0]),
        _ => coarse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let near = |got: Vec<f64>, want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            assert!(
                got.iter().zip(want).all(|(a, b)| (a - b).abs() < b * 1e-9),
                "{got:?}"
            );
        };
        // 1-2-5 gives three here, too few: every digit.
        near(
            ticks(40.0, 300.0),
            &[40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0, 300.0],
        );
        near(
            ticks(0.0011, 0.9),
            &[0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
        );
        // Nine decades: the powers of ten alone.
        assert_eq!(ticks(1.1e-6, 2e3).len(), 9);
        assert_eq!(short(90.0), "90");
        assert_eq!(short(0.002), "0.002");
        assert_eq!(short(1.5e-7), "1.50e-7");
    }
}
