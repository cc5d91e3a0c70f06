//! The watch chart: one panel, latency in µs on a log scale against the watcher
//! counts (evenly spaced), four lines.

use super::{WatchCell, WatchReport};
use crate::chart::escape;
use std::fmt::Write;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 50.0;

type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WatchCell) -> i64,
);

const SERIES: [Series; 4] = [
    ("event p50", "#1f6fb4", "", |cell| cell.event_p50_us),
    (
        "event p99",
        "#1f6fb4",
        " stroke-dasharray=\"6 4\"",
        |cell| cell.event_p99_us,
    ),
    ("put p50", "#d1452e", "", |cell| cell.put.p50_us as i64),
    ("put p99", "#d1452e", " stroke-dasharray=\"6 4\"", |cell| {
        cell.put.p99_us as i64
    }),
];

/// Powers of ten around every plotted value (values below 1 µs plot at 1).
fn decades(report: &WatchReport) -> (i32, i32) {
    let values: Vec<f64> = report
        .cells
        .iter()
        .flat_map(|cell| {
            SERIES
                .iter()
                .map(move |series| (series.3)(cell).max(1) as f64)
        })
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(1.0, f64::max);
    let low = if low.is_finite() {
        low.log10().floor() as i32
    } else {
        0
    };
    let high = (high.log10().ceil() as i32).max(low + 1);
    (low, high)
}

pub fn svg(report: &WatchReport) -> String {
    let (low, high) = decades(report);
    let plot_bottom = HEIGHT - BOTTOM;
    let plot_right = WIDTH - RIGHT;
    let y_of = |micros: i64| {
        let position = ((micros.max(1) as f64).log10() - f64::from(low)) / f64::from(high - low);
        plot_bottom - (plot_bottom - TOP) * position
    };
    let count = report.cells.len();
    let x_of = |index: usize| {
        if count <= 1 {
            (LEFT + plot_right) / 2.0
        } else {
            LEFT + 30.0 + (plot_right - LEFT - 60.0) * index as f64 / (count - 1) as f64
        }
    };
    let mut out = header(report);
    for decade in low..=high {
        let y = y_of(10i64.pow(decade.max(0) as u32));
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{plot_right}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            LEFT - 6.0,
            y + 4.0,
            label(decade)
        );
    }
    for (index, cell) in report.cells.iter().enumerate() {
        let x = x_of(index);
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            plot_bottom + 18.0,
            cell.watchers
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">watchers</text><text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\" fill=\"#444\">µs (log scale)</text>",
        (LEFT + plot_right) / 2.0,
        plot_bottom + 38.0,
        (TOP + plot_bottom) / 2.0
    );
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        plot_right - LEFT,
        plot_bottom - TOP
    );
    for (_, stroke, dash, value) in SERIES {
        let points: Vec<(f64, f64)> = report
            .cells
            .iter()
            .enumerate()
            .map(|(index, cell)| (x_of(index), y_of(value(cell))))
            .collect();
        polyline(&mut out, &points, stroke, dash);
    }
    out.push_str("</svg>\n");
    out
}

fn header(report: &WatchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">synod bench watch: event and put latency by watchers</text><text x=\"{}\" y=\"37\" text-anchor=\"middle\" fill=\"#555\" font-size=\"11\">{}</text>",
        WIDTH / 2.0,
        WIDTH / 2.0,
        escape(&format!("{} · {}", report.date, report.machine.summary()))
    );
    let mut legend_x = LEFT;
    for (name, stroke, dash, _) in SERIES {
        let _ = writeln!(
            out,
            "<line x1=\"{legend_x}\" y1=\"54\" x2=\"{}\" y2=\"54\" stroke=\"{stroke}\" stroke-width=\"2.5\"{dash}/><text x=\"{}\" y=\"58\">{name}</text>",
            legend_x + 24.0,
            legend_x + 30.0
        );
        legend_x += 110.0;
    }
    out
}

fn polyline(out: &mut String, points: &[(f64, f64)], stroke: &str, dash: &str) {
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2.5\"{dash}/>",
        path.join(" ")
    );
    for (x, y) in points {
        let _ = writeln!(
            out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{stroke}\"/>"
        );
    }
}

/// `1 µs`, `10 µs`, … `1 ms`, … `1 s`.
fn label(decade: i32) -> &'static str {
    const LABELS: [&str; 8] = [
        "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s",
    ];
    LABELS[decade.clamp(0, 7) as usize]
}
