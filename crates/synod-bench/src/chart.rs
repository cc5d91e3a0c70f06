//! A hand-written SVG chart: one panel per workload, throughput against the number of
//! clients, one line per system. No plotting dependency: the chart is a few dozen
//! elements.

use crate::process::System;
use crate::report::ClusterReport;
use std::fmt::Write;

const PANEL_WIDTH: f64 = 440.0;
const PANEL_HEIGHT: f64 = 290.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 36.0;
const MARGIN_BOTTOM: f64 = 44.0;
const HEADER: f64 = 64.0;

fn colour(system: System) -> (&'static str, &'static str) {
    match system {
        System::Synod => ("#1f6fb4", ""),
        System::SynodReadIndex => ("#1f6fb4", " stroke-dasharray=\"2 3\""),
        System::Etcd => ("#d1452e", ""),
        System::Ceiling => ("#777777", " stroke-dasharray=\"6 4\""),
    }
}

/// A round axis maximum and its tick step (1, 2, 2.5 or 5 times a power of ten).
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let rough = max / 4.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(value: f64) -> String {
    if value >= 1000.0 {
        let thousands = value / 1000.0;
        if (thousands - thousands.round()).abs() < 1e-9 {
            format!("{thousands:.0}k")
        } else {
            format!("{thousands:.1}k")
        }
    } else {
        format!("{value:.0}")
    }
}

/// The chart of a report as an SVG document.
pub fn svg(report: &ClusterReport) -> String {
    let workloads = &report.settings.workloads;
    let clients = &report.settings.clients;
    let systems = report.systems();
    let columns = 2usize.min(workloads.len().max(1));
    let rows = workloads.len().div_ceil(columns).max(1);
    let width = PANEL_WIDTH * columns as f64;
    let height = HEADER + PANEL_HEIGHT * rows as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(out, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">synod bench cluster: operations/s by concurrent clients</text>",
        width / 2.0
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"40\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
        width / 2.0,
        escape(&format!("{} · {}", report.date, report.machine.summary()))
    );
    let mut legend_x = 20.0;
    for system in &systems {
        let (stroke, dash) = colour(*system);
        let _ = writeln!(
            out,
            "<line x1=\"{legend_x}\" y1=\"54\" x2=\"{}\" y2=\"54\" stroke=\"{stroke}\" stroke-width=\"2.5\"{dash}/><text x=\"{}\" y=\"58\">{}</text>",
            legend_x + 24.0,
            legend_x + 30.0,
            escape(system.label())
        );
        legend_x += 40.0 + 7.0 * system.label().chars().count() as f64;
    }
    for (index, workload) in workloads.iter().enumerate() {
        let left = PANEL_WIDTH * (index % columns) as f64;
        let top = HEADER + PANEL_HEIGHT * (index / columns) as f64;
        let plot_left = left + MARGIN_LEFT;
        let plot_right = left + PANEL_WIDTH - MARGIN_RIGHT;
        let plot_top = top + MARGIN_TOP;
        let plot_bottom = top + PANEL_HEIGHT - MARGIN_BOTTOM;
        let max = report
            .cells
            .iter()
            .filter(|cell| cell.workload == *workload)
            .map(|cell| cell.ops_per_sec)
            .fold(0.0, f64::max);
        let (axis_max, step) = axis(max);
        let x_of = |position: usize| {
            if clients.len() <= 1 {
                (plot_left + plot_right) / 2.0
            } else {
                plot_left + (plot_right - plot_left) * position as f64 / (clients.len() - 1) as f64
            }
        };
        let y_of = |value: f64| plot_bottom - (plot_bottom - plot_top) * value / axis_max;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            (plot_left + plot_right) / 2.0,
            top + 20.0,
            escape(workload.name())
        );
        let mut tick = 0.0;
        while tick <= axis_max + step / 2.0 {
            let y = y_of(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{plot_left}\" y1=\"{y:.1}\" x2=\"{plot_right}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
                plot_left - 6.0,
                y + 4.0,
                short(tick)
            );
            tick += step;
        }
        for (position, count) in clients.iter().enumerate() {
            let x = x_of(position);
            let _ = writeln!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{plot_bottom}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#444\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{count}</text>",
                plot_bottom + 4.0,
                plot_bottom + 18.0
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">clients</text>",
            (plot_left + plot_right) / 2.0,
            plot_bottom + 34.0
        );
        let _ = writeln!(
            out,
            "<text transform=\"translate({} {}) rotate(-90)\" text-anchor=\"middle\" fill=\"#444\">ops/s</text>",
            left + 16.0,
            (plot_top + plot_bottom) / 2.0
        );
        let _ = writeln!(
            out,
            "<rect x=\"{plot_left}\" y=\"{plot_top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
            plot_right - plot_left,
            plot_bottom - plot_top
        );
        for system in &systems {
            let (stroke, dash) = colour(*system);
            let points: Vec<(f64, f64)> = clients
                .iter()
                .enumerate()
                .filter_map(|(position, count)| {
                    report
                        .cell(*system, *workload, *count)
                        .map(|cell| (x_of(position), y_of(cell.ops_per_sec)))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
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
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers_above_the_data() {
        assert_eq!(axis(7300.0), (8000.0, 2000.0));
        assert_eq!(axis(950.0), (1000.0, 250.0));
        assert_eq!(axis(0.0), (1.0, 0.25));
        let (max, step) = axis(123_456.0);
        assert!(max >= 123_456.0 && (max / step).round() <= 6.0);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short(2000.0), "2k");
        assert_eq!(short(2500.0), "2.5k");
        assert_eq!(short(250.0), "250");
    }
}
