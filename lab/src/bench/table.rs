//! The human-readable summary of [`Report`]s.

use std::fmt::Write as _;

use super::Report;

impl Report {
    /// The column titles matching [`table_row`](Self::table_row).
    pub fn table_header() -> String {
        header_row(LABEL_WIDTH)
    }

    /// One line of the summary table (no trailing newline).
    pub fn table_row(&self) -> String {
        self.row_with(LABEL_WIDTH)
    }

    fn row_with(&self, label_width: usize) -> String {
        let l = &self.latency_ms;
        row(
            label_width,
            [
                &self.label,
                &self.sent.to_string(),
                &self.ok.to_string(),
                &self.errors.to_string(),
                &format!("{:.2}", self.error_rate * 100.0),
                &format!("{:.1}/{:.1}", self.achieved_rps, self.offered_rps),
                &fmt_ms(l.p50),
                &fmt_ms(l.p90),
                &fmt_ms(l.p99),
                &fmt_ms(l.p999),
                &fmt_ms(l.max),
                &fmt_ms(self.success_latency_ms.p99),
                &opt_ms(self.queueing_count > 0, self.queueing_ms.p99),
                &(fmt_ms(self.dispatch_lag_ms.p99) + if self.lagging { " LAG" } else { "" }),
            ],
        )
    }

    /// `decisions per backend: backend-1 41.2%  backend-2 …` (no trailing newline): the
    /// routing decisions when they were counted, else the responses by `x-backend-id`.
    pub fn share_line(&self) -> String {
        let (title, share) = if self.share.is_empty() {
            ("responses per backend:", &self.response_share)
        } else {
            ("decisions per backend:", &self.share)
        };
        let mut line = String::from(title);
        if share.is_empty() {
            line.push_str(" (no x-backend-id in any response)");
        }
        for (i, (id, fraction)) in share.iter().enumerate() {
            let sep = if i == 0 { " " } else { "  " };
            let _ = write!(line, "{sep}{id} {:.1}%", fraction * 100.0);
        }
        line
    }
}

/// The summary table of `reports`: a header, one row each, then the share
/// per backend of each (labelled when there are several). Latencies are the headline
/// ones (failures at the deadline) but `ok-p99` (2xx only), `queue-p99` (latency minus
/// the backend's service time) and `lag-p99` (the generator's lateness, `LAG` when the run
/// is flagged).
pub fn format_table(reports: &[Report]) -> String {
    let width = reports
        .iter()
        .map(|r| r.label.chars().count())
        .fold(LABEL_WIDTH, usize::max);
    let mut out = header_row(width);
    out.push('\n');
    for r in reports {
        out.push_str(&r.row_with(width));
        out.push('\n');
    }
    for r in reports {
        if reports.len() > 1 {
            let _ = write!(out, "[{}] ", r.label);
        }
        out.push_str(&r.share_line());
        out.push('\n');
    }
    out
}

/// Prints [`format_table`] to stdout.
pub fn print_table(reports: &[Report]) {
    print!("{}", format_table(reports));
}

/// Width of the label column, unless a label is longer.
const LABEL_WIDTH: usize = 14;

fn header_row(label_width: usize) -> String {
    let titles = [
        "label",
        "sent",
        "ok",
        "errors",
        "err%",
        "achieved/offered",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "ok-p99",
        "queue-p99",
        "lag-p99",
    ];
    row(label_width, titles)
}

/// The label, then the cells at fixed widths (the last one as it is).
fn row(label_width: usize, cells: [&str; 14]) -> String {
    const WIDTHS: [usize; 12] = [7, 7, 7, 6, 17, 8, 8, 8, 8, 8, 8, 9];
    let mut line = format!("{:<label_width$} ", cells[0]);
    for (cell, width) in cells[1..13].iter().zip(WIDTHS) {
        let _ = write!(line, "{cell:<width$} ");
    }
    line.push_str(cells[13]);
    line
}

/// [`fmt_ms`] when the figure exists, else `-`.
fn opt_ms(known: bool, ms: f64) -> String {
    if known {
        fmt_ms(ms)
    } else {
        "-".into()
    }
}

/// Milliseconds with three significant digits, as seconds from 1 s on.
fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m >= 999.5 => format!("{:.2}s", m / 1000.0),
        m if m >= 99.95 => format!("{m:.0}ms"),
        m if m >= 9.995 => format!("{m:.1}ms"),
        m => format!("{m:.2}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_have_three_significant_digits() {
        let cases = [
            (2.314, "2.31ms"),
            (12.14, "12.1ms"),
            (677.2, "677ms"),
            (1004.0, "1.00s"),
            (999.7, "1.00s"),
            (99.97, "100ms"),
            (9.999, "10.0ms"),
        ];
        for (value, text) in cases {
            assert_eq!(fmt_ms(value), text);
        }
    }
}
