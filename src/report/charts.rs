//! The report's charts, drawn with plotters' SVG backend.

use super::{Data, Lines, VmSeries};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

type R = Result<(), String>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// The series' legend, in a box at the upper left.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, DB, CT>) -> R {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)
}

const LEVEL_NAMES: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];

/// The level as a step function: from the windows when there are any, else
/// from the level changes.
fn level_steps(s: &VmSeries, x1: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    if !s.windows.is_empty() {
        let mut prev = None;
        for w in &s.windows {
            if let Some(p) = prev {
                pts.push((w.t, p));
            }
            pts.push((w.t, f64::from(w.level)));
            prev = Some(f64::from(w.level));
        }
    } else {
        let mut cur = 0.0;
        pts.push((0.0, 0.0));
        for (t, l, _) in &s.levels {
            pts.push((*t, cur));
            cur = f64::from(*l);
            pts.push((*t, cur));
        }
    }
    if let Some(&(_, l)) = pts.last() {
        pts.push((x1, l));
    }
    pts
}

/// A VM's rates (bit/s, tx and rx) with the thresholds, and its level on
/// the right axis; then its packet rates the same way, below.
pub(super) fn rates(path: &Path, s: &VmSeries, lines: &Lines) -> R {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, bottom) = root.split_vertically(260);
    let x1 = s.windows.iter().map(|w| w.t).chain(s.levels.iter().map(|l| l.0)).fold(1.0f64, f64::max) * 1.02;
    // Without vm_window events there are no rates: only the level is drawn.
    let points: Vec<(f64, f64, f64, f64, f64)> =
        s.windows.iter().map(|w| (w.t, w.tx_bps, w.rx_bps, w.tx_pps, w.rx_pps)).collect();
    for (area, bps) in [(top, true), (bottom, false)] {
        let (med, high, unit) = if bps {
            (lines.medium_bps, lines.high_bps, "bit/s")
        } else {
            (lines.medium_pps, lines.high_pps, "packets/s")
        };
        let ymax =
            points.iter().map(|p| if bps { p.1.max(p.2) } else { p.3.max(p.4) }).chain(high).fold(1.0f64, f64::max)
                * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{}: {unit} per window and level", s.name), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..x1, 0f64..ymax)
            .map_err(e)?
            .set_secondary_coord(0f64..x1, -0.2f64..2.4);
        chart.configure_mesh().x_desc("s").y_desc(unit).y_label_formatter(&|v| format!("{v:.3e}")).draw().map_err(e)?;
        chart
            .configure_secondary_axes()
            .y_labels(3)
            .y_label_formatter(&|v| {
                let r = v.round();
                if (v - r).abs() < 0.01 && (0.0..=2.0).contains(&r) {
                    LEVEL_NAMES[r as usize].to_string()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(e)?;
        let pick = |p: &(f64, f64, f64, f64, f64), tx: bool| match (bps, tx) {
            (true, true) => p.1,
            (true, false) => p.2,
            (false, true) => p.3,
            (false, false) => p.4,
        };
        for (tx, color, label) in [(true, BLUE, "tx"), (false, GREEN, "rx")] {
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.0, pick(p, tx))), color.stroke_width(2)))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        for (v, color, label) in [(med, RGBColor(230, 150, 0), "MEDIUM threshold"), (high, RED, "HIGH threshold")] {
            if let Some(v) = v {
                chart
                    .draw_series(LineSeries::new(vec![(0.0, v), (x1, v)], color.stroke_width(1)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
        }
        chart
            .draw_secondary_series(LineSeries::new(level_steps(s, x1), BLACK.stroke_width(2)))
            .map_err(e)?
            .label("level (right)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        legend(&mut chart)?;
    }
    root.present().map_err(e)
}

/// A VM's RTT: each window's median and maximum (and the samples, when
/// written), the peak line, and the windows with too many peaks.
pub(super) fn rtt(path: &Path, s: &VmSeries, lines: &Lines) -> R {
    let root = SVGBackend::new(path, (900, 300)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let x1 = s.windows.iter().map(|w| w.t).chain(s.samples.iter().map(|p| p.0)).fold(1.0f64, f64::max) * 1.02;
    let ymax = s
        .windows
        .iter()
        .filter_map(|w| w.rtt_max)
        .chain(s.samples.iter().map(|p| p.1))
        .chain(s.peaks.iter().map(|p| p.2))
        .chain(lines.peak_ms)
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: RTT (ms)", s.name), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x1, 0f64..ymax)
        .map_err(e)?;
    chart.configure_mesh().x_desc("s").y_desc("ms").draw().map_err(e)?;
    let series = |f: fn(&super::Window) -> Option<f64>| s.windows.iter().filter_map(move |w| f(w).map(|v| (w.t, v)));
    chart
        .draw_series(LineSeries::new(series(|w| w.rtt_p50), BLUE.stroke_width(2)))
        .map_err(e)?
        .label("median per window")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|w| w.rtt_max), MAGENTA.stroke_width(1)))
        .map_err(e)?
        .label("max per window")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], MAGENTA));
    if !s.samples.is_empty() {
        chart
            .draw_series(s.samples.iter().map(|&(t, v)| Circle::new((t, v), 2, BLACK.mix(0.5).filled())))
            .map_err(e)?
            .label("samples")
            .legend(|(x, y)| Circle::new((x + 9, y), 2, BLACK.filled()));
    }
    if let Some(p) = lines.peak_ms {
        chart
            .draw_series(LineSeries::new(vec![(0.0, p), (x1, p)], RED.stroke_width(1)))
            .map_err(e)?
            .label("peak_ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    }
    if !s.peaks.is_empty() {
        chart
            .draw_series(s.peaks.iter().map(|&(t, _, m)| TriangleMarker::new((t, m), 6, RED.filled())))
            .map_err(e)?
            .label("rtt_peaks window (its max)")
            .legend(|(x, y)| TriangleMarker::new((x + 9, y), 5, RED.filled()));
    }
    legend(&mut chart)?;
    root.present().map_err(e)
}

/// Labelled bars, with each value written above its bar.
pub(super) fn bars(path: &Path, title: &str, unit: &str, bars: &[(String, f64)]) -> R {
    let w = (160 + 90 * bars.len() as u32).max(480);
    let root = SVGBackend::new(path, (w, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let ymax = bars.iter().map(|b| b.1).fold(1e-9f64, f64::max) * 1.2;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        .map_err(e)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(e)?;
    // Rectangles in order (plotters' Histogram sums through a hash map, so
    // its SVG would differ from run to run).
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut r = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1)],
                RGBColor(70, 110, 180).filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(e)?;
    let style = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(format!("{}", (b.1 * 1000.0).round() / 1000.0), (SegmentValue::CenterOf(i), b.1), style.clone())
        }))
        .map_err(e)?;
    root.present().map_err(e)
}

/// Actions by VM over time, one marker shape per kind, and evacuations as
/// vertical lines.
pub(super) fn actions(path: &Path, d: &Data) -> R {
    let mut vms: Vec<&str> =
        d.actions.iter().map(|a| a.vm.as_str()).chain(d.migrations.iter().map(|m| m.vm.as_str())).collect();
    vms.sort_unstable();
    vms.dedup();
    let rows = vms.len().max(1);
    let root = SVGBackend::new(path, (900, (120 + 22 * rows) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let x1 = d.t_end.max(1.0) * 1.02;
    let mut chart = ChartBuilder::on(&root)
        .caption("Actions", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x1, -0.5f64..(rows as f64 - 0.5))
        .map_err(e)?;
    let names: Vec<String> = vms.iter().map(|s| s.to_string()).collect();
    chart
        .configure_mesh()
        .x_desc("s")
        .y_labels(rows)
        .y_label_formatter(&|v| {
            let r = v.round();
            if (v - r).abs() < 0.01 && r >= 0.0 {
                names.get(r as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(e)?;
    let row = |vm: &str| vms.iter().position(|v| *v == vm).unwrap_or(0) as f64;
    for (t, hv, trigger, ..) in &d.evacuations {
        chart
            .draw_series(LineSeries::new(vec![(*t, -0.5), (*t, rows as f64 - 0.5)], BLACK.mix(0.4).stroke_width(1)))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("evacuate {hv} ({trigger})"),
                (*t, rows as f64 - 0.6),
                ("sans-serif", 11),
            )))
            .map_err(e)?;
    }
    for (kind, color) in [("alert", RGBColor(230, 150, 0)), ("quarantine", RED), ("migrate", BLUE), ("held", BLACK)] {
        let pts: Vec<(f64, f64)> = d.actions.iter().filter(|a| a.kind == kind).map(|a| (a.t, row(&a.vm))).collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 5, color.filled())))
            .map_err(e)?
            .label(kind)
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
    }
    let moved: Vec<(f64, f64)> = d.migrations.iter().map(|m| (m.t, row(&m.vm))).collect();
    if !moved.is_empty() {
        chart
            .draw_series(moved.into_iter().map(|p| Cross::new(p, 5, GREEN.stroke_width(2))))
            .map_err(e)?
            .label("migration seen on the wire")
            .legend(|(x, y)| Cross::new((x + 9, y), 4, GREEN.stroke_width(2)));
    }
    legend(&mut chart)?;
    root.present().map_err(e)
}
