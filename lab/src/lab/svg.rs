//! Hand-written SVG charts: grouped bars (latency percentiles per strategy) and lines
//! (p99 per second per strategy). No plotting crate: a chart is a few hundred lines of
//! text, and this keeps the output stable and the dependency tree small.
//!
//! The value axis switches to a logarithmic scale when the values span more than
//! [`LOG_SPAN`]× (latency percentiles often do: a 5 ms median next to a 1 s tail), and
//! says so in its label.

use std::fmt::Write as _;

/// Width and height of every chart, in pixels.
const W: f64 = 880.0;
const H: f64 = 480.0;
/// Plot area margins: left (value labels), right (legend), top (title), bottom (labels).
const ML: f64 = 80.0;
const MR: f64 = 180.0;
const MT: f64 = 50.0;
const MB: f64 = 70.0;

/// Above this ratio of largest to smallest positive value, the value axis is logarithmic.
pub const LOG_SPAN: f64 = 30.0;

/// Colours of the series, in order (colour-blind-safe palette by Okabe and Ito).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

/// Dash patterns of the lines, in order, so that lines on top of each other stay visible.
const DASHES: [&str; 4] = ["none", "7 4", "2 3", "10 3 2 3"];

/// One line of a [`line_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y) points in order of x; non-finite values are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A value axis: linear from 0, or logarithmic over whole decades.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear { max: f64 },
    Log { lo: f64, hi: f64 },
}

impl Scale {
    fn for_values(values: impl Iterator<Item = f64>) -> Self {
        let positive: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
        let max = positive.iter().copied().fold(0.0, f64::max);
        let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
        if max <= 0.0 {
            return Scale::Linear { max: 1.0 };
        }
        if max / min > LOG_SPAN {
            Scale::Log {
                lo: 10f64.powf(min.log10().floor()),
                hi: 10f64.powf(max.log10().ceil()),
            }
        } else {
            Scale::Linear { max: nice_ceiling(max) }
        }
    }

    /// Position of `v` from 0 (bottom) to 1 (top), clamped.
    fn frac(&self, v: f64) -> f64 {
        match *self {
            Scale::Linear { max } => (v / max).clamp(0.0, 1.0),
            Scale::Log { lo, hi } => {
                if v <= lo {
                    0.0
                } else {
                    ((v.log10() - lo.log10()) / (hi.log10() - lo.log10())).clamp(0.0, 1.0)
                }
            }
        }
    }

    fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { max } => {
                let step = nice_step(max / 5.0);
                (0..=((max / step).round() as usize)).map(|i| i as f64 * step).collect()
            }
            Scale::Log { lo, hi } => {
                let mut out = Vec::new();
                let mut decade = lo;
                while decade <= hi * 1.0001 {
                    for m in [1.0, 2.0, 5.0] {
                        let v = decade * m;
                        if v <= hi * 1.0001 {
                            out.push(v);
                        }
                    }
                    decade *= 10.0;
                }
                out
            }
        }
    }

    fn suffix(&self) -> &'static str {
        match self {
            Scale::Linear { .. } => "",
            Scale::Log { .. } => " (log scale)",
        }
    }
}

/// 1, 2 or 5 × a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= x * 0.999)
        .unwrap_or(10.0 * p)
}

/// A round number at least `x`, for the top of a linear axis.
fn nice_ceiling(x: f64) -> f64 {
    let step = nice_step(x / 5.0);
    (x / step).ceil() * step
}

/// A tick label: no trailing zeros, thousands as "k".
fn fmt_tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", fmt_tick(v / 1000.0))
    } else if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn open(title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        (ML + W - MR) / 2.0,
        escape(title)
    );
    s
}

/// The value axis with grid lines, its label, and the frame of the plot area.
fn value_axis(s: &mut String, scale: &Scale, label: &str) {
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    for t in scale.ticks() {
        let y = y0 - scale.frac(t) * (y0 - y1);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22,{:.1}) rotate(-90)" text-anchor="middle">{}{}</text>"#,
        (y0 + y1) / 2.0,
        escape(label),
        scale.suffix()
    );
}

/// The legend right of the plot: a swatch per name, or a line sample in the series'
/// dash pattern when `lines`.
fn legend(s: &mut String, names: &[String], lines: bool) {
    let x = W - MR + 16.0;
    for (i, name) in names.iter().enumerate() {
        let y = MT + 10.0 + i as f64 * 20.0;
        let colour = PALETTE[i % PALETTE.len()];
        if lines {
            let _ = write!(
                s,
                r#"<line class="legend" x1="{x}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="{}"/>"#,
                y - 4.0,
                x + 16.0,
                y - 4.0,
                DASHES[i % DASHES.len()]
            );
        } else {
            let _ = write!(
                s,
                r#"<rect class="legend" x="{x}" y="{:.1}" width="14" height="14" fill="{colour}"/>"#,
                y - 11.0
            );
        }
        let _ = writeln!(s, r#"<text x="{}" y="{y:.1}">{}</text>"#, x + 20.0, escape(name));
    }
}

/// Grouped bars: one group per entry of `groups` (e.g. strategies), one bar per entry
/// of `series` (e.g. p50, p90, p99, p99.9) in each; `values[g][s]` is the height.
pub fn bar_chart(title: &str, y_label: &str, groups: &[String], series: &[String], values: &[Vec<f64>]) -> String {
    let scale = Scale::for_values(values.iter().flatten().copied());
    let mut s = open(title);
    value_axis(&mut s, &scale, y_label);
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    let group_w = (x1 - x0) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    for (g, name) in groups.iter().enumerate() {
        let gx = x0 + g as f64 * group_w + group_w * 0.1;
        for (k, v) in values.get(g).into_iter().flatten().enumerate().take(series.len()) {
            if !v.is_finite() {
                continue;
            }
            let h = scale.frac(*v) * (y0 - y1);
            let _ = writeln!(
                s,
                r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {} = {}</title></rect>"#,
                gx + k as f64 * bar_w,
                y0 - h,
                bar_w * 0.92,
                PALETTE[k % PALETTE.len()],
                escape(name),
                escape(&series[k]),
                fmt_tick(*v)
            );
        }
        // Long names would overlap their neighbours: slant them.
        let (cx, cy) = (gx + group_w * 0.4, y0 + 18.0);
        if name.chars().count() as f64 * 7.0 > group_w {
            let _ = writeln!(
                s,
                r#"<text transform="translate({cx:.1},{:.1}) rotate(-20)" text-anchor="end">{}</text>"#,
                cy - 4.0,
                escape(name)
            );
        } else {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{cy:.1}" text-anchor="middle">{}</text>"#,
                escape(name)
            );
        }
    }
    legend(&mut s, series, false);
    s.push_str("</svg>\n");
    s
}

/// Lines over a shared x axis, one per series, with a dot at each point.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let scale = Scale::for_values(all.iter().map(|p| p.1));
    let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
        (xmin, xmax)
    } else {
        (0.0, 1.0)
    };
    let mut s = open(title);
    value_axis(&mut s, &scale, y_label);
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    let px = |x: f64| x0 + (x - xmin) / (xmax - xmin) * (x1 - x0);
    let step = nice_step((xmax - xmin) / 8.0);
    let mut t = (xmin / step).ceil() * step;
    while t <= xmax + step * 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            fmt_tick(t),
            x = px(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - MB + 42.0,
        escape(x_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let dash = DASHES[i % DASHES.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), y0 - scale.frac(y) * (y0 - y1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{}"><title>{}</title></polyline>"#,
            pts.join(" "),
            escape(&ser.name)
        );
        for p in &pts {
            if let Some((x, y)) = p.split_once(',') {
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>"#);
            }
        }
    }
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    legend(&mut s, &names, true);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn bars_one_per_value_with_legend_and_labels() {
        let groups = strings(&["round_robin", "p2c<ewma>"]);
        let series = strings(&["p50", "p90", "p99", "p99.9"]);
        let values = vec![vec![10.0, 20.0, 40.0, 80.0], vec![9.0, 12.0, 15.0, 19.0]];
        let svg = bar_chart("Latency & more", "latency (ms)", &groups, &series, &values);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(count(&svg, r#"class="bar""#), 8);
        assert_eq!(count(&svg, r#"class="legend""#), 4);
        assert!(svg.contains("Latency &amp; more") && svg.contains("p2c&lt;ewma&gt;"));
        assert!(!svg.contains("p2c<ewma>"));
        assert!(svg.contains(">latency (ms)</text>"), "linear: no log note");
        // The tallest bar reaches the top of the plot area, a linear axis starts at 0.
        assert!(svg.contains(r#"y="50.0" width"#), "{svg}");
    }

    #[test]
    fn wide_ranges_use_a_log_axis() {
        let values = vec![vec![2.0, 1000.0]];
        let svg = bar_chart("t", "ms", &strings(&["a"]), &strings(&["p50", "max"]), &values);
        assert!(svg.contains("ms (log scale)"));
        for tick in [">1<", ">10<", ">100<", ">1000<"] {
            assert!(svg.contains(tick), "{tick} missing");
        }
        assert_eq!(
            Scale::for_values([0.0, f64::NAN].into_iter()),
            Scale::Linear { max: 1.0 }
        );
    }

    #[test]
    fn lines_one_polyline_per_series_skipping_gaps() {
        let series = vec![
            Series {
                name: "round_robin".into(),
                points: vec![(5.0, 10.0), (6.0, 30.0), (7.0, f64::NAN), (8.0, 20.0)],
            },
            Series {
                name: "p2c_ewma".into(),
                points: vec![(5.0, 9.0), (6.0, 11.0), (7.0, 10.0), (8.0, 12.0)],
            },
        ];
        let svg = line_chart("p99 over time", "seconds since load start", "p99 (ms)", &series);
        assert_eq!(count(&svg, "<polyline"), 2);
        assert_eq!(count(&svg, "<circle"), 7);
        assert_eq!(count(&svg, r#"class="legend""#), 2);
        assert!(svg.contains(">seconds since load start</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Empty input still makes a valid (empty) chart.
        let empty = line_chart("none", "x", "y", &[]);
        assert!(empty.contains("<svg") && empty.contains("</svg>") && !empty.contains("NaN"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_ceiling(83.0), 100.0);
        assert_eq!(nice_ceiling(7.3), 8.0);
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(250.0), "250");
        assert_eq!(fmt_tick(20_000.0), "20k");
    }
}
