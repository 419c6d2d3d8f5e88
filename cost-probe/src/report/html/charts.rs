//! The report's charts, each drawn by plotters into an SVG string of one fixed size, so that the
//! page can place them on a fixed grid. plotters' SVG backend escapes every text it writes (group
//! keys, model and budget names come from records and rules); labels are also cut short and
//! stripped of control characters here so that one long key cannot cover a chart.
use std::time::{Duration, UNIX_EPOCH};

use plotters::{coord::Shift, prelude::*};

mod bars;
mod histogram;

use crate::report::{Report, forecast::Series, render::sig3, views::Views};

pub const WIDTH: u32 = 640;
pub const HEIGHT: u32 = 320;
const FONT: &str = "sans-serif";
/// About this many time bins per time chart, whatever the window.
const TARGET_BINS: f64 = 60.0;
/// Groups drawn apart in the cost chart; the rest are summed into one band.
const TOP_GROUPS: usize = 6;
const LABEL_CHARS: usize = 28;
const NS: f64 = 1e9;

/// Tableau 10: distinct and saturated, so a test can tell data from axes and text.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(232, 232, 232);

/// One drawn chart.
pub struct Chart {
    /// The HTML id of its figure.
    pub id: &'static str,
    pub title: &'static str,
    pub svg: String,
}

#[derive(Debug, thiserror::Error)]
#[error("drawing the {chart} chart: {message}")]
pub struct ChartError {
    chart: &'static str,
    message: String,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Every chart, in page order.
pub fn all(r: &Report, v: &Views) -> Result<Vec<Chart>, ChartError> {
    Ok(vec![
        draw("chart-cost", "cost over time by group", |a, t| {
            cost(a, t, v)
        })?,
        draw("chart-energy", "energy split over time", |a, t| {
            energy(a, t, v)
        })?,
        draw("chart-tokens", "$ per 1k tokens by model", |a, t| {
            bars::tokens(a, t, v)
        })?,
        draw("chart-latency", "latency distribution", |a, t| {
            histogram::distribution(
                a,
                t,
                &v.latency_us,
                1e3,
                "latency (ms, log scale)",
                PALETTE[0],
            )
        })?,
        draw("chart-joules", "energy per request distribution", |a, t| {
            histogram::distribution(
                a,
                t,
                &v.energy_uj,
                1e6,
                "J per request (log scale)",
                PALETTE[1],
            )
        })?,
        draw("chart-budget", "budget position", |a, t| {
            bars::budget(a, t, r)
        })?,
    ])
}

fn draw(
    id: &'static str,
    title: &'static str,
    f: impl FnOnce(&Area, &str) -> Drawn,
) -> Result<Chart, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| f(&root, title))
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| ChartError {
                chart: id,
                message: e.to_string(),
            })?;
    }
    Ok(Chart { id, title, svg })
}

/// The title and, in the middle, why there is nothing to draw.
fn empty(area: &Area, title: &str, why: &str) -> Drawn {
    let inner = area.titled(title, (FONT, 18))?;
    let (w, h) = inner.dim_in_pixel();
    inner.draw(&Text::new(
        why.to_owned(),
        (w as i32 / 6, h as i32 / 2),
        (FONT, 14).into_font().color(&RGBColor(110, 110, 110)),
    ))?;
    Ok(())
}

/// A record-supplied name as a chart label: control characters dropped, cut to a few words.
fn label(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() <= LABEL_CHARS {
        clean
    } else {
        let mut cut: String = clean.chars().take(LABEL_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// A time-axis label: UTC clock time, as precise as the window needs.
fn clock(ns: i64, span_ns: i64) -> String {
    let s = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
        .to_string();
    // 2026-12-01T21:36:18.302Z
    let (a, b) = match span_ns {
        n if n < 10_000_000_000 => (11, 23),
        n if n < 120_000_000_000 => (11, 21),
        n if n < 7_200_000_000_000 => (11, 19),
        n if n < 3 * 86_400_000_000_000 => (11, 16),
        _ => (5, 10),
    };
    s.get(a..b).unwrap_or(&s).to_owned()
}

/// Time bins over the window, whole multiples of the widest series' bucket and aligned to it,
/// so every bucket of every series falls in exactly one bin. The first and last bins are cut
/// to the window, and their rates are over the part inside it.
struct Bins {
    first: i64,
    last: i64,
    start: i64,
    width: i64,
    n: usize,
}

impl Bins {
    fn over((first, last): (i64, i64), series: &[&Series]) -> Self {
        let widest = series
            .iter()
            .filter_map(|s| s.points().next().map(|(_, w, _)| w))
            .max()
            .unwrap_or(100_000_000);
        let last = last.max(first + 1);
        let k = ((last - first) as f64 / TARGET_BINS / widest as f64)
            .ceil()
            .max(1.0) as i64;
        let width = widest * k;
        let start = first.div_euclid(width) * width;
        let n = ((last - 1 - start).div_euclid(width) + 1) as usize;
        Self {
            first,
            last,
            start,
            width,
            n,
        }
    }

    /// `s` per second in each bin, times `scale`.
    fn rate(&self, s: &Series, scale: f64) -> Vec<f64> {
        let mut v = vec![0.0; self.n];
        for (t, _, x) in s.points() {
            let i = (t - self.start).div_euclid(self.width);
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| v.get_mut(i)) {
                *slot += x;
            }
        }
        for (i, x) in v.iter_mut().enumerate() {
            let secs = self.edge(i + 1) - self.edge(i);
            *x = if secs > 0.0 { *x * scale / secs } else { 0.0 };
        }
        v
    }

    /// Bin edge `i`, in seconds from the window's start.
    fn edge(&self, i: usize) -> f64 {
        let t = (self.start + i as i64 * self.width).clamp(self.first, self.last);
        (t - self.first) as f64 / NS
    }

    fn label(&self, x: f64) -> String {
        clock(self.first + (x * NS) as i64, self.last - self.first)
    }
}

/// Stacked bands over time, drawn as steps (one flat top per bin).
fn stacked(
    area: &Area,
    title: &str,
    y_desc: &str,
    bins: &Bins,
    bands: &[(String, RGBColor, Vec<f64>)],
) -> Drawn {
    let top = (0..bins.n)
        .map(|i| bands.iter().map(|b| b.2[i]).sum::<f64>())
        .fold(0.0, f64::max);
    let ymax = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..bins.edge(bins.n), 0.0..ymax)?;
    let x_fmt = |x: &f64| bins.label(*x);
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|y| sig3(*y))
        .x_desc("UTC")
        .y_desc(y_desc)
        .label_style((FONT, 12))
        .light_line_style(GRID)
        .draw()?;
    let mut lower = vec![0.0; bins.n];
    for (name, color, values) in bands {
        let upper: Vec<f64> = lower.iter().zip(values).map(|(a, b)| a + b).collect();
        let mut outline: Vec<(f64, f64)> = (0..bins.n)
            .flat_map(|i| [(bins.edge(i), upper[i]), (bins.edge(i + 1), upper[i])])
            .collect();
        outline.extend(
            (0..bins.n)
                .rev()
                .flat_map(|i| [(bins.edge(i + 1), lower[i]), (bins.edge(i), lower[i])]),
        );
        let c = *color;
        chart
            .draw_series(std::iter::once(Polygon::new(outline, c.mix(0.8).filled())))?
            .label(label(name))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        lower = upper;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// The legend box every chart with series labels draws, at `at`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    at: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

/// Each group's priced spend as $/hour; the groups past the first few summed into one band.
fn cost(area: &Area, title: &str, v: &Views) -> Drawn {
    let Some(window) = v.window else {
        return empty(area, title, "no records with a time");
    };
    let mut groups: Vec<&(Vec<String>, f64, Series)> = v.spend.iter().collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if groups.iter().all(|g| g.1 <= 0.0) {
        return empty(area, title, "no priced requests");
    }
    let series: Vec<&Series> = groups.iter().map(|g| &g.2).collect();
    let bins = Bins::over(window, &series);
    let mut bands: Vec<(String, RGBColor, Vec<f64>)> = groups
        .iter()
        .take(TOP_GROUPS)
        .enumerate()
        .map(|(i, g)| (g.0.join(","), PALETTE[i], bins.rate(&g.2, 3600.0)))
        .collect();
    if groups.len() > TOP_GROUPS {
        let mut rest = vec![0.0; bins.n];
        for g in &groups[TOP_GROUPS..] {
            for (a, b) in rest.iter_mut().zip(bins.rate(&g.2, 3600.0)) {
                *a += b;
            }
        }
        bands.push((
            format!("{} other groups", groups.len() - TOP_GROUPS),
            PALETTE[TOP_GROUPS],
            rest,
        ));
    }
    stacked(area, title, "$ per hour", &bins, &bands)
}

/// The interval records' energy as power: to requests, idle, other processes.
fn energy(area: &Area, title: &str, v: &Views) -> Drawn {
    let Some(window) = v.window else {
        return empty(area, title, "no records with a time");
    };
    if v.attributed_j.points().next().is_none() {
        return empty(area, title, "no interval records");
    }
    let bins = Bins::over(window, &[&v.attributed_j, &v.idle_j, &v.other_j]);
    let bands = [
        ("to requests", PALETTE[0], &v.attributed_j),
        ("idle", PALETTE[1], &v.idle_j),
        ("other processes", PALETTE[4], &v.other_j),
    ]
    .map(|(name, c, s)| (name.to_owned(), c, bins.rate(s, 1.0)));
    stacked(area, title, "W (J/s)", &bins, &bands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_give_a_steady_rate_as_a_steady_rate() {
        let mut s = Series::default();
        // 1 $ every 100 ms for 6 s, the window a little off the grid.
        for i in 0..60 {
            s.add(i * 100_000_000 + 50_000_000, 1.0);
        }
        let b = Bins::over((50_000_000, 6_050_000_000), &[&s]);
        assert_eq!((b.width, b.n), (100_000_000, 61));
        let r = b.rate(&s, 1.0);
        // The cut first and last bins hold one bucket over 50 ms; the rest 1 $ over 100 ms.
        assert!((r[0] - 20.0).abs() < 1e-9, "{}", r[0]);
        assert!(r[1..60].iter().all(|x| (x - 10.0).abs() < 1e-9), "{r:?}");
        assert!(r[60].abs() < 1e-9);
        assert!((b.edge(61) - 6.0).abs() < 1e-12);
    }

    #[test]
    fn bins_of_a_long_window_are_whole_buckets() {
        let mut s = Series::default();
        let day = 86_400_000_000_000;
        for i in 0..=1000 {
            s.add(i * day / 1000, 1.0);
        }
        let width = s.points().next().unwrap().1;
        let b = Bins::over((0, day), &[&s]);
        assert_eq!(b.width % width, 0);
        assert!((40..=80).contains(&b.n), "{}", b.n);
        let secs: f64 = (0..b.n).map(|i| b.edge(i + 1) - b.edge(i)).sum();
        let total: f64 = b
            .rate(&s, 1.0)
            .iter()
            .enumerate()
            .map(|(i, r)| r * (b.edge(i + 1) - b.edge(i)))
            .sum();
        assert!((secs - 86_400.0).abs() < 1e-6);
        assert!((total - 1001.0).abs() < 1e-6, "{total}");
    }

    #[test]
    fn labels_drop_control_characters_and_are_cut() {
        assert_eq!(label("a\u{1b}[31mb\n"), "a[31mb");
        let long = "x".repeat(100);
        assert_eq!(label(&long).chars().count(), LABEL_CHARS);
        assert!(label(&long).ends_with('…'));
    }
}
