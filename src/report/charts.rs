//! The report's charts, drawn with plotters' SVG backend: time on wall-clock axes, events in their own lanes above the rates.

use super::read::{Data, VmSeries, LEVEL_NAMES};
use super::units::{si, si_scale, tick_label, time_ticks, trim};
use super::Lines;
use crate::action::ActionKind;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

type R = Result<(), String>;
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type TimeChart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<Keyed, Keyed>>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// An f64 axis with its ticks where we put them (plotters' own
/// `with_key_points` loses the label formatter).
#[derive(Clone)]
struct Keyed {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Keyed {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Keyed {
        Keyed { inner: range.into(), ticks }
    }
}

impl Ranged for Keyed {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(v, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Every chart is this wide, and its plot starts this far from the left,
/// so that the lanes and panels of one chart (and the charts of one page)
/// share their time axis.
pub(super) const WIDTH: u32 = 1000;
const LEFT: u32 = 92;
const RIGHT: u32 = 34;
const LEGEND_H: u32 = 24;
const LANE_H: u32 = 22;
const X_LABELS_H: u32 = 22;
const PANEL_H: u32 = 170;

const TX: RGBColor = RGBColor(31, 119, 180);
const RX: RGBColor = RGBColor(140, 86, 75);
const AMBER: RGBColor = RGBColor(235, 150, 0);
const CRIMSON: RGBColor = RGBColor(210, 35, 35);
const MAGENTA_: RGBColor = RGBColor(190, 0, 160);
const GREEN_: RGBColor = RGBColor(0, 140, 60);
const GREY: RGBColor = RGBColor(120, 120, 120);
pub(super) const LEVEL_COLORS: [RGBColor; 3] = [RGBColor(205, 228, 205), AMBER, CRIMSON];

/// Something that happened at one time, marked on the charts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum MarkKind {
    Alert,
    Evacuation,
    ActionAlert,
    Quarantine,
    Migrate,
    Held,
    Migration,
}

impl MarkKind {
    pub fn action(kind: ActionKind, held: bool) -> MarkKind {
        match (held, kind) {
            (true, _) => MarkKind::Held,
            (_, ActionKind::Quarantine) => MarkKind::Quarantine,
            (_, ActionKind::Migrate) => MarkKind::Migrate,
            (_, ActionKind::Alert) => MarkKind::ActionAlert,
        }
    }

    fn color(self) -> RGBColor {
        match self {
            MarkKind::Alert => MAGENTA_,
            MarkKind::Evacuation => BLACK,
            MarkKind::ActionAlert => AMBER,
            MarkKind::Quarantine => CRIMSON,
            MarkKind::Migrate => TX,
            MarkKind::Held => GREY,
            MarkKind::Migration => GREEN_,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MarkKind::Alert => "IDS alert",
            MarkKind::Evacuation => "evacuation",
            MarkKind::ActionAlert => "action: alert",
            MarkKind::Quarantine => "action: quarantine",
            MarkKind::Migrate => "action: migrate",
            MarkKind::Held => "action held",
            MarkKind::Migration => "migration seen",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    pub t: f64,
    pub kind: MarkKind,
}

/// The marker of a kind at a point (in pixels relative to it).
fn glyph<'b, DB: DrawingBackend>(kind: MarkKind, dx: i32) -> DynElement<'b, DB, (i32, i32)> {
    let c = kind.color();
    match kind {
        MarkKind::Alert => TriangleMarker::new((dx, 0), 7, c.filled()).into_dyn(),
        MarkKind::Evacuation => Rectangle::new([(dx - 5, -5), (dx + 5, 5)], c.filled()).into_dyn(),
        MarkKind::Migration => Cross::new((dx, 0), 5, c.stroke_width(3)).into_dyn(),
        MarkKind::Held => Circle::new((dx, 0), 5, c.stroke_width(2)).into_dyn(),
        _ => Circle::new((dx, 0), 5, c.filled()).into_dyn(),
    }
}

/// A key of a legend row.
#[derive(Clone, Copy)]
enum Key {
    Line(RGBColor, &'static str),
    Thin(RGBColor, &'static str),
    Band(RGBColor, &'static str),
    Mark(MarkKind),
    /// A window with more RTT peaks than `rtt.max_peaks`.
    Peaks,
}

/// Where each key of a legend goes: (row, x) of its glyph, rows from 0.
fn legend_layout(keys: &[Key]) -> Vec<(u32, i32)> {
    let mut at = Vec::new();
    let (mut row, mut x) = (0, LEFT as i32);
    for k in keys {
        let w = 25 + (k.label().chars().count() as i32) * 7 + 14;
        if x + w > (WIDTH - RIGHT) as i32 && x > LEFT as i32 {
            row += 1;
            x = LEFT as i32;
        }
        at.push((row, x));
        x += w;
    }
    at
}

/// The height of a legend's rows.
fn legend_h(keys: &[Key]) -> u32 {
    legend_layout(keys).last().map_or(0, |l| l.0 + 1) * LEGEND_H
}

/// A legend in rows above the chart (never over the data).
fn legend_rows(area: &Area, keys: &[Key]) -> R {
    let font = ("sans-serif", 12).into_font().color(&BLACK);
    let style = font.pos(Pos::new(HPos::Left, VPos::Center));
    for (k, (row, x)) in keys.iter().zip(legend_layout(keys)) {
        let y = (row * LEGEND_H + LEGEND_H / 2) as i32;
        match *k {
            Key::Line(c, _) => {
                area.draw(&PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))).map_err(e)?;
            }
            Key::Thin(c, _) => {
                area.draw(&PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1))).map_err(e)?;
            }
            Key::Band(c, _) => {
                area.draw(&Rectangle::new([(x, y - 6), (x + 20, y + 6)], c.filled())).map_err(e)?;
            }
            Key::Mark(m) => {
                area.draw(&(EmptyElement::at((x + 10, y)) + glyph(m, 0))).map_err(e)?;
            }
            Key::Peaks => {
                area.draw(&TriangleMarker::new((x + 10, y), 6, CRIMSON.filled())).map_err(e)?;
            }
        }
        area.draw(&Text::new(k.label(), (x + 25, y), style.clone())).map_err(e)?;
    }
    Ok(())
}

impl Key {
    fn label(&self) -> &'static str {
        match *self {
            Key::Line(_, l) | Key::Thin(_, l) | Key::Band(_, l) => l,
            Key::Mark(m) => m.label(),
            Key::Peaks => "window with too many RTT peaks",
        }
    }
}

/// The time axis: seconds since the first event, labelled in UTC.
struct Time {
    t0_us: i64,
    x1: f64,
    ticks: Vec<f64>,
    step: f64,
}

impl Time {
    fn new(d: &Data) -> Time {
        // A little room after the last event, so that it shows.
        let x1 = d.t_end.max(1.0) * 1.03;
        let (ticks, step) = time_ticks(d.t0_us, x1);
        Time { t0_us: d.t0_us, x1, ticks, step }
    }

    fn range(&self) -> Keyed {
        Keyed::new(0f64..self.x1, self.ticks.clone())
    }
}

/// Lanes of marks (and a level band) over the time axis.
enum Lane<'s> {
    Level(&'s VmSeries),
    Marks(Vec<Mark>),
}

fn lanes(area: &Area, time: &Time, lanes: &[(&str, Lane)]) -> R {
    let n = lanes.len() as f64;
    let names: Vec<&str> = lanes.iter().map(|l| l.0).collect();
    let centers: Vec<f64> = (0..lanes.len()).map(|i| i as f64 + 0.5).collect();
    let mut chart = ChartBuilder::on(area)
        .margin_right(RIGHT)
        .x_label_area_size(X_LABELS_H)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(time.range(), Keyed::new(0f64..n, centers))
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style(("sans-serif", 12))
        .x_label_formatter(&|v| tick_label(time.t0_us, *v, time.step))
        .y_label_formatter(&|v| {
            let i = (n - v - 0.5).round();
            if i >= 0.0 {
                names.get(i as usize).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(e)?;
    for (i, (_, lane)) in lanes.iter().enumerate() {
        let y = n - i as f64 - 0.5;
        match lane {
            Lane::Level(s) => {
                let segs = level_segments(s, time.x1);
                chart
                    .draw_series(segs.iter().map(|&(a, b, l)| {
                        Rectangle::new([(a, y - 0.38), (b, y + 0.38)], LEVEL_COLORS[l as usize].filled())
                    }))
                    .map_err(e)?;
                let style = ("sans-serif", 11).into_font().color(&WHITE).pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(
                        segs.iter()
                            .filter(|&&(a, b, l)| l > 0 && b - a > time.x1 * 0.06)
                            .map(|&(a, b, l)| Text::new(LEVEL_NAMES[l as usize], ((a + b) / 2.0, y), style.clone())),
                    )
                    .map_err(e)?;
            }
            Lane::Marks(marks) => {
                // Marks of one kind at one time are one marker, with their
                // count; kinds that fall on the same spot step to the right.
                let mut groups: Vec<(f64, MarkKind, usize)> = Vec::new();
                for m in marks {
                    match groups.iter_mut().find(|g| g.0 == m.t && g.1 == m.kind) {
                        Some(g) => g.2 += 1,
                        None => groups.push((m.t, m.kind, 1)),
                    }
                }
                groups.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let near = time.x1 * 0.012;
                let mut placed: Vec<(f64, MarkKind, usize, i32)> = Vec::new();
                for &(t, k, c) in &groups {
                    let dx = placed
                        .iter()
                        .filter(|p| (t - p.0).abs() < near)
                        .map(|p| p.3 + if p.2 > 1 { 30 } else { 13 })
                        .max()
                        .unwrap_or(0);
                    placed.push((t, k, c, dx));
                }
                chart
                    .draw_series(placed.iter().map(|&(t, k, _, dx)| EmptyElement::at((t, y)) + glyph(k, dx)))
                    .map_err(e)?;
                let style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
                chart
                    .draw_series(placed.iter().filter(|g| g.2 > 1).map(|&(t, _, c, dx)| {
                        EmptyElement::at((t, y)) + Text::new(format!("×{c}"), (dx + 7, 0), style.clone())
                    }))
                    .map_err(e)?;
            }
        }
    }
    Ok(())
}

/// A VM's level as segments (start, end, level): from its windows when
/// there are any (each window ends at its `t`), else from its level changes.
fn level_segments(s: &VmSeries, x1: f64) -> Vec<(f64, f64, u8)> {
    let mut segs: Vec<(f64, f64, u8)> = Vec::new();
    let mut push = |a: f64, b: f64, l: u8| match segs.last_mut() {
        Some(last) if last.2 == l && (last.1 - a).abs() < 1e-9 => last.1 = b,
        _ if b > a => segs.push((a, b, l)),
        _ => {}
    };
    if !s.windows.is_empty() {
        let len = s.windows.windows(2).map(|w| w[1].t - w[0].t).filter(|d| *d > 0.0).fold(f64::MAX, f64::min);
        let len = if len == f64::MAX { 1.0 } else { len };
        for w in &s.windows {
            push((w.t - len).max(0.0), w.t, w.level);
        }
    } else {
        let mut cur = (0.0, s.levels.first().map_or(0, |l| l.from));
        for l in &s.levels {
            push(cur.0, l.t, cur.1);
            cur = (l.t, l.to);
        }
        push(cur.0, x1, cur.1);
    }
    segs
}

/// A line: its colour, width and points.
type Series = (RGBColor, u32, Vec<(f64, f64)>);

/// A line across at a value: colour, value, name.
type Threshold = (RGBColor, f64, &'static str);

/// A panel of values over time, the marks as faint vertical lines through it.
struct Panel<'a> {
    unit: &'static str,
    /// Divides values into the axis unit: SI prefixes (`Mbit/s`) when true.
    si: bool,
    /// Whole numbers only on the axis (a count).
    whole: bool,
    lines: Vec<Series>,
    thresholds: Vec<Threshold>,
    /// Before the unit on the axis (`RTT `).
    what: &'static str,
    dots: Vec<(f64, f64)>,
    triangles: Vec<(f64, f64)>,
    marks: &'a [Mark],
}

fn panel(area: &Area, time: &Time, p: &Panel) -> R {
    let data = p
        .lines
        .iter()
        .flat_map(|l| l.2.iter().map(|q| q.1))
        .chain(p.dots.iter().map(|d| d.1))
        .chain(p.triangles.iter().map(|d| d.1))
        .fold(0.0f64, f64::max);
    // A threshold far above the data would flatten it to the axis: it is
    // named in the corner instead of drawn.
    let (shown, off): (Vec<&Threshold>, Vec<&Threshold>) = p.thresholds.iter().partition(|t| t.1 <= 3.0 * data);
    let top = shown.iter().map(|t| t.1).fold(data, f64::max);
    let ymax = if top <= 0.0 { 1.0 } else { top * 1.12 };
    let (scale, prefix) = if p.si { si_scale(top) } else { (1.0, "") };
    let yticks = if p.whole {
        let step = (top / 5.0).ceil().max(1.0);
        (0..).map(|i| f64::from(i) * step).take_while(|v| *v <= ymax).collect()
    } else {
        // plotters' own ticks, on a plain range.
        let r: RangedCoordf64 = (0f64..ymax).into();
        r.key_points(6usize)
    };
    let desc = format!("{}{prefix}{}", p.what, p.unit);
    let mut chart: TimeChart = ChartBuilder::on(area)
        .margin_right(RIGHT)
        .margin_top(6)
        .x_label_area_size(X_LABELS_H)
        .y_label_area_size(LEFT)
        .build_cartesian_2d(time.range(), Keyed::new(0f64..ymax, yticks))
        .map_err(e)?;
    chart
        .configure_mesh()
        .y_desc(desc)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .x_label_formatter(&|v| tick_label(time.t0_us, *v, time.step))
        .y_label_formatter(&|v| trim(*v / scale))
        .draw()
        .map_err(e)?;
    for m in p.marks {
        chart
            .draw_series(LineSeries::new([(m.t, 0.0), (m.t, ymax)], m.kind.color().mix(0.45).stroke_width(1)))
            .map_err(e)?;
    }
    // Thresholds as thin solid lines: plotters writes a thresholds line as one
    // element per dash, which would make every chart several times larger.
    for &&(c, v, _) in &shown {
        chart.draw_series(LineSeries::new([(0.0, v), (time.x1, v)], c.stroke_width(1))).map_err(e)?;
    }
    if !off.is_empty() {
        let value = |v: f64| if p.si { si(v, p.unit) } else { format!("{} {}", trim(v), p.unit) };
        let names: Vec<String> = off.iter().map(|t| format!("{} {}", t.2, value(t.1))).collect();
        let style = ("sans-serif", 11).into_font().color(&GREY).pos(Pos::new(HPos::Right, VPos::Top));
        area.draw(&Text::new(format!("above the chart: {}", names.join(", ")), ((WIDTH - RIGHT - 4) as i32, 8), style))
            .map_err(e)?;
    }
    for (c, w, pts) in &p.lines {
        let pts = thin(pts, time.x1, (WIDTH - LEFT - RIGHT) as usize);
        chart.draw_series(LineSeries::new(pts, c.stroke_width(*w))).map_err(e)?;
    }
    chart.draw_series(p.dots.iter().map(|&q| Circle::new(q, 2, BLACK.mix(0.5).filled()))).map_err(e)?;
    chart.draw_series(p.triangles.iter().map(|&q| TriangleMarker::new(q, 6, CRIMSON.filled()))).map_err(e)?;
    Ok(())
}

/// A line of more points than the plot has pixel columns, cut to the lowest
/// and highest point of each column (in time order), so that a long run
/// keeps its peaks and its charts keep their size.
fn thin(pts: &[(f64, f64)], x1: f64, columns: usize) -> Vec<(f64, f64)> {
    if pts.len() <= 2 * columns || x1 <= 0.0 {
        return pts.to_vec();
    }
    let col = |t: f64| ((t / x1 * columns as f64) as usize).min(columns - 1);
    let mut out = Vec::with_capacity(2 * columns);
    let mut i = 0;
    while i < pts.len() {
        let c = col(pts[i].0);
        let mut j = i;
        let (mut lo, mut hi) = (i, i);
        while j < pts.len() && col(pts[j].0) == c {
            if pts[j].1 < pts[lo].1 {
                lo = j;
            }
            if pts[j].1 > pts[hi].1 {
                hi = j;
            }
            j += 1;
        }
        out.push(pts[lo.min(hi)]);
        if lo != hi {
            out.push(pts[lo.max(hi)]);
        }
        i = j;
    }
    out
}

fn marks_legend(marks: &[Mark]) -> Vec<Key> {
    let mut kinds: Vec<MarkKind> = marks.iter().map(|m| m.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.into_iter().map(Key::Mark).collect()
}

/// The page's first chart: how many VMs were MEDIUM and HIGH over time,
/// and every IDS alert, evacuation, action and migration in its lane.
pub(super) fn timeline(path: &Path, d: &Data) -> R {
    let time = Time::new(d);
    let alert_marks: Vec<Mark> = d.alerts.iter().map(|a| Mark { t: a.t, kind: MarkKind::Alert }).collect();
    let evac_marks: Vec<Mark> = d.evacuations.iter().map(|v| Mark { t: v.t, kind: MarkKind::Evacuation }).collect();
    let act_marks: Vec<Mark> =
        d.actions.iter().map(|a| Mark { t: a.t, kind: MarkKind::action(a.kind, a.held) }).collect();
    let mig_marks: Vec<Mark> = d.migrations.iter().map(|m| Mark { t: m.t, kind: MarkKind::Migration }).collect();
    let all: Vec<Mark> = [&alert_marks, &evac_marks, &act_marks, &mig_marks].into_iter().flatten().copied().collect();

    // VMs at each level, stepping at every level change.
    let mut changes: Vec<(f64, &str, u8, u8)> =
        d.vms.iter().flat_map(|(mac, s)| s.levels.iter().map(move |l| (l.t, mac.as_str(), l.from, l.to))).collect();
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    let mut now = [0i64; 3];
    let (mut med, mut high) = (vec![(0.0, 0.0)], vec![(0.0, 0.0)]);
    for (t, _, from, to) in changes {
        now[from as usize] -= 1;
        now[to as usize] += 1;
        for (pts, l) in [(&mut med, 1), (&mut high, 2)] {
            let v = now[l].max(0) as f64;
            if pts.last().is_some_and(|p| p.1 != v) {
                let prev = pts.last().map_or(0.0, |p| p.1);
                pts.push((t, prev));
                pts.push((t, v));
            }
        }
    }
    for pts in [&mut med, &mut high] {
        let last = pts.last().map_or(0.0, |p| p.1);
        pts.push((time.x1, last));
    }

    let lane_list = [
        ("IDS alerts", Lane::Marks(alert_marks)),
        ("evacuations", Lane::Marks(evac_marks)),
        ("actions", Lane::Marks(act_marks)),
        ("migrations", Lane::Marks(mig_marks)),
    ];
    let lanes_h = LANE_H * lane_list.len() as u32 + X_LABELS_H;
    let mut keys = vec![Key::Line(AMBER, "VMs at MEDIUM"), Key::Line(CRIMSON, "VMs at HIGH")];
    keys.extend(marks_legend(&all));
    let lh = legend_h(&keys);
    let root = SVGBackend::new(path, (WIDTH, lh + lanes_h + PANEL_H * 3 / 4)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, rest) = root.split_vertically(lh);
    let (mid, bottom) = rest.split_vertically(lanes_h);
    legend_rows(&top, &keys)?;
    lanes(&mid, &time, &lane_list)?;
    panel(
        &bottom,
        &time,
        &Panel {
            unit: "VMs",
            what: "",
            si: false,
            whole: true,
            lines: vec![(AMBER, 2, med), (CRIMSON, 2, high)],
            thresholds: vec![],
            dots: vec![],
            triangles: vec![],
            marks: &all,
        },
    )?;
    root.present().map_err(e)
}

/// One VM: its level band and its events in lanes, then its bit/s and
/// packets/s (tx and rx, with the thresholds), then its RTT; all on the
/// page's time axis, the events drawn through every panel.
pub(super) fn vm(path: &Path, d: &Data, s: &VmSeries, marks: &[Mark], lines: &Lines) -> R {
    let time = Time::new(d);
    let rtt = s.windows.iter().any(|w| w.rtt_p50.is_some()) || !s.samples.is_empty() || !s.peaks.is_empty();
    let rates = !s.windows.is_empty();
    let of = |kinds: &[MarkKind]| -> Vec<Mark> { marks.iter().filter(|m| kinds.contains(&m.kind)).copied().collect() };
    let mut lane_list = vec![("level", Lane::Level(s))];
    for (name, kinds) in [
        ("IDS", &[MarkKind::Alert, MarkKind::Evacuation][..]),
        ("actions", &[MarkKind::ActionAlert, MarkKind::Quarantine, MarkKind::Migrate, MarkKind::Held]),
        ("migration", &[MarkKind::Migration]),
    ] {
        let m = of(kinds);
        if !m.is_empty() {
            lane_list.push((name, Lane::Marks(m)));
        }
    }
    let lanes_h = LANE_H * lane_list.len() as u32 + X_LABELS_H;
    let panels = u32::from(rates) * 2 + u32::from(rtt);

    let mut keys = vec![Key::Band(LEVEL_COLORS[1], "MEDIUM"), Key::Band(LEVEL_COLORS[2], "HIGH")];
    if rates {
        keys.extend([Key::Line(TX, "tx"), Key::Line(RX, "rx")]);
    }
    if lines.medium_bps.is_some() && rates {
        keys.extend([Key::Thin(AMBER, "MEDIUM threshold"), Key::Thin(CRIMSON, "HIGH threshold")]);
    }
    if rtt {
        keys.extend([Key::Line(TX, "RTT median"), Key::Line(MAGENTA_, "RTT max")]);
        if lines.peak_ms.is_some() {
            keys.push(Key::Thin(CRIMSON, "peak_ms"));
        }
        if !s.peaks.is_empty() {
            keys.push(Key::Peaks);
        }
    }
    keys.extend(marks_legend(marks));
    let lh = legend_h(&keys);
    let root = SVGBackend::new(path, (WIDTH, lh + lanes_h + PANEL_H * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, rest) = root.split_vertically(lh);
    let (mid, mut rest) = rest.split_vertically(lanes_h);
    legend_rows(&top, &keys)?;
    lanes(&mid, &time, &lane_list)?;

    if rates {
        for (unit, med, high, pick) in [
            ("bit/s", lines.medium_bps, lines.high_bps, (|w| (w.tx_bps, w.rx_bps)) as fn(&super::read::Window) -> _),
            ("pps", lines.medium_pps, lines.high_pps, |w| (w.tx_pps, w.rx_pps)),
        ] {
            let (area, below) = rest.split_vertically(PANEL_H);
            rest = below;
            let thresholds: Vec<(RGBColor, f64, &str)> = [(AMBER, med, "MEDIUM"), (CRIMSON, high, "HIGH")]
                .into_iter()
                .filter_map(|(c, v, n)| v.map(|v| (c, v, n)))
                .collect();
            panel(
                &area,
                &time,
                &Panel {
                    unit,
                    what: "",
                    si: true,
                    whole: false,
                    lines: vec![
                        (TX, 2, s.windows.iter().map(|w| (w.t, pick(w).0)).collect()),
                        (RX, 2, s.windows.iter().map(|w| (w.t, pick(w).1)).collect()),
                    ],
                    thresholds,
                    dots: vec![],
                    triangles: vec![],
                    marks,
                },
            )?;
        }
    }
    if rtt {
        let series = |f: fn(&super::read::Window) -> Option<f64>| -> Vec<(f64, f64)> {
            s.windows.iter().filter_map(|w| f(w).map(|v| (w.t, v))).collect()
        };
        panel(
            &rest,
            &time,
            &Panel {
                unit: "ms",
                what: "RTT ",
                si: false,
                whole: false,
                lines: vec![(TX, 2, series(|w| w.rtt_p50)), (MAGENTA_, 1, series(|w| w.rtt_max))],
                thresholds: lines.peak_ms.map(|p| vec![(CRIMSON, p, "peak_ms")]).unwrap_or_default(),
                dots: s.samples.clone(),
                triangles: s.peaks.iter().filter_map(|&(t, _, m)| Some((t, m?))).collect(),
                marks,
            },
        )?;
    }
    root.present().map_err(e)
}

/// Labelled bars, with each value written above its bar.
pub(super) fn bars(path: &Path, title: &str, unit: &str, bars: &[(String, f64)]) -> R {
    let w = (160 + 90 * bars.len() as u32).clamp(480, WIDTH);
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
        .y_label_formatter(&|v| trim(*v))
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

/// Bars in pairs: the wire's (blue) and a reference's (orange, e.g.
/// QEMU's own figure for the same migrations) side by side per label, each
/// with its value on top; a missing reference leaves its slot empty.
pub(super) fn paired_bars(
    path: &Path,
    title: &str,
    unit: &str,
    names: (&str, &str),
    bars: &[(String, f64, Option<f64>)],
) -> R {
    let w = (160 + 120 * bars.len() as u32).clamp(480, WIDTH);
    let root = SVGBackend::new(path, (w, 340)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let ymax = bars.iter().map(|b| b.1.max(b.2.unwrap_or(0.0))).fold(1e-9f64, f64::max) * 1.25;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        .map_err(e)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .y_label_formatter(&|v| trim(*v))
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(e)?;
    let wire = RGBColor(70, 110, 180);
    let other = RGBColor(235, 150, 0);
    // Each segment is 100 px or more wide: the pair takes its middle,
    // as rectangles in order (see `bars`).
    let seg_px = (w.saturating_sub(60 + 16) / n as u32).max(2);
    let half = (seg_px / 2).saturating_sub(10);
    let mut rects = Vec::new();
    for (i, b) in bars.iter().enumerate() {
        let mut r = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1)], wire.filled());
        r.set_margin(0, 0, 10, half + 12);
        rects.push(r);
        if let Some(q) = b.2 {
            let mut r =
                Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), q)], other.filled());
            r.set_margin(0, 0, half + 12, 10);
            rects.push(r);
        }
    }
    chart.draw_series(rects).map_err(e)?;
    let label = |v: f64| format!("{}", (v * 1000.0).round() / 1000.0);
    let style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    let dx = (half / 2 + 1) as i32;
    let wire_texts = bars.iter().enumerate().map(|(i, b)| {
        EmptyElement::at((SegmentValue::CenterOf(i), b.1)) + Text::new(label(b.1), (-dx, 0), style.clone())
    });
    chart.draw_series(wire_texts).map_err(e)?;
    let other_texts = bars.iter().enumerate().filter_map(|(i, b)| {
        b.2.map(|q| EmptyElement::at((SegmentValue::CenterOf(i), q)) + Text::new(label(q), (dx, 0), style.clone()))
    });
    chart.draw_series(other_texts).map_err(e)?;
    // The legend, top right.
    let font = ("sans-serif", 12).into_font();
    let x = w as i32 - 150;
    for (k, (name, c)) in [(names.0, wire), (names.1, other)].into_iter().enumerate() {
        let y = 30 + 16 * k as i32;
        root.draw(&Rectangle::new([(x, y), (x + 12, y + 10)], c.filled())).map_err(e)?;
        root.draw(&Text::new(name.to_string(), (x + 18, y - 1), font.clone())).map_err(e)?;
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::read::{LevelChange, Window};

    fn change(t: f64, from: u8, to: u8) -> LevelChange {
        LevelChange {
            us: 0,
            t,
            from,
            to,
            reason: crate::detect::Reason::Rate,
            direction: None,
            bps: 0.0,
            pps: 0.0,
            horizon_bytes: None,
            limit_bytes: None,
            hypervisor: None,
        }
    }

    #[test]
    fn long_lines_keep_each_pixel_column_s_lowest_and_highest_point() {
        let short: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 1.0)).collect();
        assert_eq!(thin(&short, 10.0, 5), short);
        // 3,600 windows on 100 columns: 36 per column, one spike kept.
        let mut long: Vec<(f64, f64)> = (0..3600).map(|i| (f64::from(i), f64::from(i % 7))).collect();
        long[1801].1 = 1e9;
        let t = thin(&long, 3600.0, 100);
        assert!(t.len() <= 200, "{}", t.len());
        assert!(t.contains(&(1801.0, 1e9)));
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "in time order");
        assert_eq!(t.iter().filter(|p| p.1 == 0.0).count(), 100, "each column keeps its low");
    }

    #[test]
    fn the_level_band_follows_the_windows_or_else_the_changes() {
        let mut s = VmSeries::default();
        for (t, level) in [(1.0, 0), (2.0, 1), (3.0, 1), (4.0, 2), (5.0, 0)] {
            s.windows.push(Window { t, level, ..Window::default() });
        }
        assert_eq!(level_segments(&s, 6.0), vec![(0.0, 1.0, 0), (1.0, 3.0, 1), (3.0, 4.0, 2), (4.0, 5.0, 0)]);
        let s = VmSeries { levels: vec![change(2.0, 0, 1), change(4.5, 1, 0)], ..VmSeries::default() };
        assert_eq!(level_segments(&s, 6.0), vec![(0.0, 2.0, 0), (2.0, 4.5, 1), (4.5, 6.0, 0)]);
    }
}
