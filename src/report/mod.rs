//! Report: an HTML page with SVG charts (plotters) made from an events file, overview first, for the operator after an incident.
//!
//! `vmsentry report EVENTS.jsonl --out DIR` reads the events a run wrote and
//! writes `DIR/index.html`, in the order an operator reads it:
//! - an overview: the span in UTC, the run's totals (its `summary`), decode
//!   errors and drops, and how many VMs went MEDIUM and HIGH, IDS alerts,
//!   evacuations, actions and migrations there were;
//! - a timeline of the whole run: VMs at MEDIUM and HIGH over time, with
//!   every alert, evacuation, action and migration in its lane;
//! - tables: the VMs raised (with why), the IDS alerts (sid, message,
//!   victim), the actions (outcome and destination apart), the
//!   evacuations, the migrations (and the first paper's Figures 4 to 6,
//!   downtime, total time and bytes by flavor, measured on the wire);
//! - one chart per VM that did something (a level change, an action, a
//!   migration, RTT peaks, an IDS alert naming it), most severe first and at
//!   most [`MAX_VM_CHARTS`]: its level band and events above its bit/s,
//!   packets/s and RTT, on the page's wall-clock axis;
//! - every quiet VM in one table.
//!
//! Tables carry the events' own numbers; axes and summaries use human units.
//! The same events give the same files, byte for byte.

mod charts;
mod read;
mod units;

use crate::detect::{Direction, Reason};
use charts::{Mark, MarkKind};
use read::{by_flavor, by_flavor_qemu, Data, LevelChange, Migration, VmSeries, LEVEL_NAMES};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use units::{bytes, clock, ms, si};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Event { path: PathBuf, line: usize, msg: String },
    #[error("{path}: no events to report: {why}")]
    Empty { path: PathBuf, why: &'static str },
    #[error("cannot write {path}: {msg}")]
    Write { path: PathBuf, msg: String },
}

/// Charts are drawn for at most this many VMs (the most severe first); the
/// others that did something are still in the tables. This bounds the page
/// whatever the size of the cloud.
pub const MAX_VM_CHARTS: usize = 40;
/// The overview names this many raised VMs and IDS alerts (the tables have all).
const OVERVIEW_ITEMS: usize = 3;
/// Per VM, at most this many rows of its own events under its chart.
const MAX_VM_EVENTS: usize = 30;

/// The thresholds drawn on the charts (from the rules, when given).
#[derive(Clone, Debug, Default)]
pub struct Lines {
    pub medium_bps: Option<f64>,
    pub high_bps: Option<f64>,
    pub medium_pps: Option<f64>,
    pub high_pps: Option<f64>,
    pub peak_ms: Option<f64>,
}

impl Lines {
    pub fn from_rules(r: &crate::config::Rules) -> Lines {
        let t = &r.thresholds;
        Lines {
            medium_bps: Some(t.medium_bps as f64),
            high_bps: Some(t.high_bps as f64),
            medium_pps: Some(t.medium_pps as f64),
            high_pps: Some(t.high_pps as f64),
            peak_ms: Some(r.rtt.peak_ms),
        }
    }
}

/// What [`write`] wrote, and what it left out of the events and why.
#[derive(Clone, Debug)]
pub struct Written {
    pub page: PathBuf,
    pub notes: Vec<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x}"))
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "–".into(), esc)
}

/// The nonzero counts of a record of counts (as its JSON object): `a 1, b 2`, or `none`.
fn counts(c: &impl serde::Serialize) -> String {
    let v = serde_json::to_value(c).unwrap_or_default();
    let parts: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The charts' file name for a VM (its MAC without colons).
fn vm_file(mac: &str) -> String {
    let id: String = mac.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("vm-{id}.svg")
}

/// Why a level change happened, in words and human units.
fn why(l: &LevelChange, s: &VmSeries) -> String {
    match l.reason {
        Reason::Rate => format!(
            "rate, {}: {}, {}",
            l.direction.map_or("tx", Direction::as_str),
            si(l.bps, "bit/s"),
            si(l.pps, "pps")
        ),
        Reason::Volume => format!(
            "volume: {} sent within the horizon, over {}",
            l.horizon_bytes.map_or_else(|| "?".into(), bytes),
            l.limit_bytes.map_or_else(|| "?".into(), bytes)
        ),
        Reason::Rtt => match s.peaks.iter().find(|p| (p.0 - l.t).abs() < 1e-6) {
            Some((_, n, Some(m))) => format!("RTT: {n} peaks in the window, max {}", ms(*m)),
            Some((_, n, None)) => format!("RTT: {n} peaks in the window"),
            None => "RTT peaks".into(),
        },
        other => esc(other.as_str()),
    }
}

/// Each VM's marks, in one pass over the events: its actions, migrations,
/// the IDS alerts naming it and the evacuations whose plan holds it.
fn marks_by_vm(d: &Data) -> BTreeMap<&str, Vec<Mark>> {
    let mut m: BTreeMap<&str, Vec<Mark>> = BTreeMap::new();
    let mut add = |mac: &'_ str, t: f64, kind: MarkKind| {
        if let Some((k, _)) = d.vms.get_key_value(mac) {
            m.entry(k.as_str()).or_default().push(Mark { t, kind });
        }
    };
    for a in &d.alerts {
        if let Some(mac) = &a.victim_mac {
            add(mac, a.t, MarkKind::Alert);
        }
    }
    for v in &d.evacuations {
        for mac in &v.vms {
            add(mac, v.t, MarkKind::Evacuation);
        }
    }
    for a in &d.actions {
        add(&a.mac, a.t, MarkKind::action(a.kind, a.held));
    }
    for x in &d.migrations {
        add(&x.mac, x.t, MarkKind::Migration);
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| a.t.total_cmp(&b.t).then(a.kind.cmp(&b.kind)));
    }
    m
}

/// A VM that did something, and what to sort the charts by.
struct Active<'a> {
    mac: &'a str,
    s: &'a VmSeries,
    marks: Vec<Mark>,
    /// Most severe first: highest level, then acted on, then first seen doing it.
    rank: (std::cmp::Reverse<u8>, std::cmp::Reverse<bool>, i64),
}

fn active<'a>(d: &'a Data) -> Vec<Active<'a>> {
    let mut by_vm = marks_by_vm(d);
    let mut v: Vec<Active> = d
        .vms
        .iter()
        .filter_map(|(mac, s)| {
            let marks = by_vm.remove(mac.as_str()).unwrap_or_default();
            let busy = !s.levels.is_empty() || !s.peaks.is_empty() || !marks.is_empty();
            busy.then(|| {
                let first = s
                    .levels
                    .iter()
                    .map(|l| l.t)
                    .chain(s.peaks.iter().map(|p| p.0))
                    .chain(marks.iter().map(|m| m.t))
                    .fold(f64::MAX, f64::min);
                let acted = marks.iter().any(|m| m.kind != MarkKind::Alert);
                Active {
                    mac,
                    s,
                    rank: (std::cmp::Reverse(s.max_level()), std::cmp::Reverse(acted), d.us(first)),
                    marks,
                }
            })
        })
        .collect();
    v.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.mac.cmp(b.mac)));
    v
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;font-size:14px;max-width:1040px;margin:0 auto;padding:0 12px;\
color:#222}h1{margin:12px 0 2px}h2{margin:28px 0 6px;border-bottom:2px solid #ddd}h3{margin:18px 0 4px}\
.sub{color:#555;margin:0 0 10px}table{border-collapse:collapse;margin:4px 0 10px}\
td,th{border:1px solid #d4d4d4;padding:2px 7px;text-align:left;vertical-align:top;white-space:nowrap}td.w{white-space:normal}th{background:#f2f2f2}\
td.n{text-align:right;font-variant-numeric:tabular-nums}#overview th{width:170px}#overview td{white-space:normal}\
.MEDIUM{background:#fde3b0}.HIGH{background:#f6b5b0}.note{background:#fff3c4;border:1px solid #e0c060;padding:4px 8px}\
img{display:block;max-width:100%}img.bars{display:inline-block;max-width:49%;vertical-align:top}nav a{margin-right:12px}small{color:#666}details{margin:6px 0}";

/// Writes `DIR/index.html` and its charts; returns the page's path and the
/// notes on what was left out of the events. With `qemu`, a file of QEMU's
/// own figures per migration, those are shown beside the wire's.
pub fn write(events: &Path, out: &Path, lines: &Lines, qemu: Option<&Path>) -> Result<Written, ReportError> {
    let mut d = read::read(events)?;
    if let Some(q) = qemu {
        read::attach_qemu(q, &mut d)?;
    }
    let d = d;
    std::fs::create_dir_all(out).map_err(|e| ReportError::Write { path: out.to_path_buf(), msg: e.to_string() })?;
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |msg: String| ReportError::Write { path: p.clone(), msg }
    };
    let t_last = d.us(d.t_end);
    let dated = units::day(d.t0_us) != units::day(t_last);
    let at = |us: i64| clock(us, dated);
    let active = active(&d);
    let charted: Vec<&Active> = active.iter().take(MAX_VM_CHARTS).collect();
    let is_charted = |mac: &str| charted.iter().any(|a| a.mac == mac);
    let vm_link = |mac: &str, name: &str| {
        if is_charted(mac) {
            format!("<a href=\"#{}\">{}</a>", esc(&vm_file(mac)), esc(name))
        } else {
            esc(name)
        }
    };

    // The packets' span: the summary is stamped with the last packet; else the events'.
    let span = d.summary.as_ref().map_or((d.t0_us, t_last), |s| {
        let end = s.ts.as_micros();
        (end - (s.duration_s * 1e6).round() as i64, end)
    });
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vmsentry report</title><style>{STYLE}</style>\
         </head><body><h1>vmsentry report</h1><p class=\"sub\">{} UTC to {} ({}) · <code>{}</code></p>",
        clock(span.0, true),
        clock(span.1, dated),
        ms((span.1 - span.0) as f64 / 1000.0),
        esc(&events.display().to_string())
    );
    h += "<nav><a href=\"#raised-h\">raised</a><a href=\"#alerts-h\">IDS alerts</a><a href=\"#actions-h\">actions</a>\
          <a href=\"#migrations-h\">migrations</a><a href=\"#vms-h\">VM charts</a><a href=\"#quiet-h\">quiet VMs</a></nav>";
    for n in &d.notes {
        let _ = write!(h, "<p class=\"note\">Note: {}</p>", esc(n));
    }

    // Overview.
    let raised: Vec<&Active> = active.iter().filter(|a| a.s.max_level() > 0).collect();
    let n_high = raised.iter().filter(|a| a.s.max_level() == 2).count();
    let mut ov: Vec<(&str, String)> = Vec::new();
    match &d.summary {
        Some(s) => {
            let (start, end) = span;
            ov.push((
                "capture (UTC)",
                format!(
                    "{} – {} ({} of packets; events {} – {})",
                    clock(start, true),
                    clock(end, dated),
                    ms(s.duration_s * 1000.0),
                    at(d.t0_us),
                    at(t_last)
                ),
            ));
            ov.push((
                "packets",
                format!(
                    "{} ({} bytes, {}) over {} s of packet time, {} windows",
                    s.packets,
                    s.bytes,
                    bytes(s.bytes as f64),
                    num(Some(s.duration_s)),
                    s.windows
                ),
            ));
            ov.push(("VMs", format!("{} MACs seen, {} of them VMs of the rules", s.vms, s.known_vms)));
            let mut errs = format!("{}", s.decode_errors);
            if s.decode_errors > 0 {
                let _ = write!(errs, " ({})", counts(&s.decode_errors_by_kind));
            }
            if s.damaged_files > 0 {
                let _ = write!(errs, "; {} input files damaged (read up to the damage)", s.damaged_files);
            }
            ov.push(("decode errors", errs));
            let drops: Vec<String> = [
                (s.queue_dropped, "frames dropped (queue full)"),
                (s.mac_evictions, "MACs evicted"),
                (s.placement_dropped, "placement evidence dropped"),
                (s.rtt.dropped, "RTT samples dropped"),
                (s.rtt.flow_evictions, "flows evicted"),
                (s.rtt.probe_evictions, "RTT probes evicted"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, l)| format!("{l} {n}"))
            .collect();
            ov.push(("drops and evictions", if drops.is_empty() { "none".into() } else { drops.join(", ") }));
            ov.push(("RTT samples", format!("{}", s.rtt.samples)));
        }
        None => ov.push((
            "capture (UTC)",
            format!("events {} – {} ({})", clock(d.t0_us, true), clock(t_last, dated), ms(d.t_end * 1000.0)),
        )),
    }
    if d.summary.is_none() {
        ov.push(("totals", "no <code>summary</code> event: the run had not ended when this file was read".into()));
    }
    // The first few by name in the overview itself, the rest in the tables below.
    let first_few = |items: Vec<String>, total: usize| {
        let mut s = items.join("; ");
        if total > items.len() {
            let _ = write!(s, "; and {} more below", total - items.len());
        }
        s
    };
    let mut vms_raised = format!("{} to MEDIUM or HIGH, {n_high} of them HIGH", raised.len());
    if !raised.is_empty() {
        let items = raised
            .iter()
            .take(OVERVIEW_ITEMS)
            .filter_map(|a| {
                let top = a.s.max_level();
                let l = a.s.levels.iter().find(|l| l.to == top)?;
                Some(format!(
                    "{} {} at {} ({})",
                    vm_link(a.mac, &a.s.name),
                    LEVEL_NAMES[top as usize],
                    at(l.us),
                    why(l, a.s)
                ))
            })
            .collect();
        let _ = write!(vms_raised, ": {}", first_few(items, raised.len()));
    }
    ov.push(("VMs raised", vms_raised));
    let alert_outcomes = {
        let mut o: std::collections::BTreeMap<&str, usize> = Default::default();
        for a in &d.alerts {
            *o.entry(a.outcome.as_str()).or_default() += 1;
        }
        o.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
    };
    ov.push((
        "IDS alerts",
        if d.alerts.is_empty() {
            "0".into()
        } else {
            let items = d
                .alerts
                .iter()
                .take(OVERVIEW_ITEMS)
                .map(|a| {
                    let vm = match (&a.victim_mac, &a.victim_vm) {
                        (Some(mac), Some(name)) => format!(", {}", vm_link(mac, name)),
                        _ => String::new(),
                    };
                    format!("sid {} “{}” on {}{vm} at {}", a.sid, esc(&a.msg), esc(&a.victim), at(a.us))
                })
                .collect();
            format!("{} ({alert_outcomes}): {}", d.alerts.len(), first_few(items, d.alerts.len()))
        },
    ));
    ov.push((
        "evacuations",
        if d.evacuations.is_empty() {
            "0".into()
        } else {
            let hv: Vec<String> =
                d.evacuations.iter().map(|v| format!("{} ({})", v.hypervisor, v.trigger.as_str())).collect();
            format!("{}: {}", d.evacuations.len(), hv.join(", "))
        },
    ));
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for a in &d.actions {
        *kinds.entry(a.kind.as_str().to_string()).or_default() += 1;
        *outcomes.entry(a.outcome.to_string()).or_default() += 1;
    }
    let join = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<String>>().join(", ")
    };
    let mut acts = format!("{}", d.actions.len());
    if !d.actions.is_empty() {
        let _ = write!(acts, " ({}; {})", join(&kinds), join(&outcomes));
    }
    if let Some(s) = &d.summary {
        let _ = write!(acts, "; by the backends: {}", counts(&s.actions));
    }
    ov.push(("actions", acts));
    let mean_down: Vec<f64> = d.migrations.iter().filter_map(|m| m.downtime_ms).collect();
    ov.push((
        "migrations",
        if mean_down.is_empty() {
            format!("{} seen on the wire", d.migrations.len())
        } else {
            format!(
                "{} seen on the wire, downtime {} on average",
                d.migrations.len(),
                ms((mean_down.iter().sum::<f64>() / mean_down.len() as f64 * 1000.0).round() / 1000.0)
            )
        },
    ));
    if !d.conflicts.is_empty() {
        let c: Vec<String> = d.conflicts.iter().map(|(k, n)| format!("{n} {}", k.as_str())).collect();
        ov.push(("conflicts", c.join(", ")));
    }
    h += "<h2>Overview</h2><table id=\"overview\">";
    for (k, v) in &ov {
        let _ = write!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    h += "</table>";
    charts::timeline(&out.join("timeline.svg"), &d).map_err(werr(&out.join("timeline.svg")))?;
    h +=
        "<img src=\"timeline.svg\" alt=\"timeline: VMs at MEDIUM and HIGH, alerts, evacuations, actions, migrations\">";

    // The VMs raised, with why.
    h += "<h2 id=\"raised-h\">VMs raised to MEDIUM or HIGH</h2>";
    if raised.is_empty() {
        h += "<p>None.</p>";
    } else {
        h += "<table id=\"raised\"><tr><th>VM</th><th>MAC</th><th>highest</th><th>reached at</th><th>why</th>\
              <th>hypervisor</th><th>changes</th><th>at the end</th></tr>";
        for a in &raised {
            let top = a.s.max_level();
            let first = a.s.levels.iter().find(|l| l.to == top);
            let end = a.s.levels.last().map_or(0, |l| l.to);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{lv}\">{lv}</td><td>{}</td><td class=\"w\">{}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td>{}</td></tr>",
                vm_link(a.mac, &a.s.name),
                esc(a.mac),
                first.map_or_else(|| "–".into(), |l| at(l.us)),
                first.map_or_else(|| "–".into(), |l| why(l, a.s)),
                opt(&first.and_then(|l| l.hypervisor.clone())),
                a.s.levels.len(),
                LEVEL_NAMES[end as usize],
                lv = LEVEL_NAMES[top as usize],
            );
        }
        h += "</table>";
    }

    // IDS alerts.
    h += "<h2 id=\"alerts-h\">IDS alerts</h2>";
    if d.alerts.is_empty() {
        h += "<p>No IDS alerts in these events.</p>";
    } else {
        h += "<table id=\"alerts\"><tr><th>at</th><th>sid</th><th>severity</th><th>message</th><th>source</th>\
              <th>victim</th><th>victim VM</th><th>victim hypervisor</th><th>outcome</th></tr>";
        for a in &d.alerts {
            let vm = match (&a.victim_mac, &a.victim_vm) {
                (Some(mac), Some(name)) => vm_link(mac, name),
                _ => "–".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"w\">{}</td><td>{}</td><td>{}</td><td>{vm}</td><td>{}</td>\
                 <td>{}</td></tr>",
                at(a.us),
                a.sid,
                a.severity,
                esc(&a.msg),
                esc(&a.src),
                esc(&a.victim),
                opt(&a.victim_hypervisor),
                esc(a.outcome.as_str())
            );
        }
        h += "</table>";
    }

    // Actions and evacuations.
    h += "<h2 id=\"actions-h\">Actions</h2>";
    if d.actions.is_empty() {
        h += "<p>No actions in these events.</p>";
    } else {
        h += "<table id=\"actions\"><tr><th>VM</th><th>at</th><th>action</th><th>destination</th><th>outcome</th>\
              <th>level</th><th>reason</th><th>note</th></tr>";
        for a in &d.actions {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"w\">{}</td></tr>",
                vm_link(&a.mac, &a.vm),
                at(a.us),
                esc(a.kind.as_str()),
                opt(&a.destination),
                esc(&a.outcome.to_string()),
                esc(a.level.as_str()),
                esc(a.reason.as_str()),
                esc(&a.note)
            );
        }
        h += "</table>";
    }
    if !d.evacuations.is_empty() {
        h += "<h3>Evacuations</h3><table id=\"evacuations\"><tr><th>hypervisor</th><th>at</th><th>trigger</th>\
              <th>sid</th><th>migrate</th><th>held</th><th>skipped</th><th>no destination</th></tr>";
        for v in &d.evacuations {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&v.hypervisor),
                at(v.us),
                esc(v.trigger.as_str()),
                v.sid.map_or_else(|| "–".into(), |s| s.to_string()),
                v.migrate,
                v.held,
                v.skipped,
                v.no_destination
            );
        }
        h += "</table>";
    }

    // Migrations.
    h += "<h2 id=\"migrations-h\">Migrations</h2>";
    if d.migrations.is_empty() {
        h += "<p>No migrations in these events.</p>";
    } else {
        let with_qemu = qemu.is_some();
        let qemu_th = if with_qemu { "<th>QEMU downtime ms</th><th>QEMU total ms</th><th>QEMU bytes</th>" } else { "" };
        let _ = write!(
            h,
            "<table id=\"migrations\"><tr><th>VM</th><th>at</th><th>flavor</th><th>from</th><th>to</th>\
             <th>signature</th><th>downtime ms</th><th>total ms</th><th>bytes</th><th>moved</th>{qemu_th}</tr>"
        );
        for m in &d.migrations {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                vm_link(&m.mac, &m.vm),
                at(m.us),
                esc(&m.flavor),
                esc(&m.from),
                esc(&m.to),
                esc(m.signature.as_str()),
                num(m.downtime_ms),
                num(m.total_ms),
                num(m.bytes),
                m.bytes.map_or_else(|| "–".into(), bytes)
            );
            if with_qemu {
                let q = m.qemu.unwrap_or_default();
                h.truncate(h.len() - "</tr>".len());
                let _ = write!(
                    h,
                    "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    num(q[0]),
                    num(q[1]),
                    num(q[2])
                );
            }
        }
        let qemu_th = if with_qemu {
            "<th>QEMU mean downtime ms</th><th>QEMU mean total ms</th><th>QEMU mean bytes</th>"
        } else {
            ""
        };
        let _ = write!(
            h,
            "</table><table id=\"flavors\"><tr><th>flavor</th><th>migrations</th><th>mean downtime ms</th>\
             <th>mean total ms</th><th>mean bytes</th>{qemu_th}</tr>"
        );
        let qemu_means = by_flavor_qemu(&d.migrations);
        for (k, (f, n, m)) in by_flavor(&d.migrations).into_iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td>",
                esc(&f),
                num(m[0]),
                num(m[1]),
                num(m[2])
            );
            if with_qemu {
                let q = qemu_means[k].2;
                let _ = write!(
                    h,
                    "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                    num(q[0]),
                    num(q[1]),
                    num(q[2])
                );
            }
            h += "</tr>";
        }
        h += "</table>";
        // Per migration only while the bars stay readable; by flavor always.
        let per_migration = d.migrations.len() <= 12;
        for (k, (file, title, unit)) in [
            ("migration-downtime.svg", "Downtime", "ms"),
            ("migration-total.svg", "Total migration time", "ms"),
            ("migration-bytes.svg", "Bytes moved", "MiB"),
        ]
        .into_iter()
        .enumerate()
        {
            let scale = if unit == "MiB" { 1.0 / (1024.0 * 1024.0) } else { 1.0 };
            let get = |m: &Migration| [m.downtime_ms, m.total_ms, m.bytes][k].map(|v| v * scale);
            let get_qemu = |m: &Migration| m.qemu.and_then(|q| q[k]).map(|v| v * scale);
            if per_migration {
                let label = |m: &Migration| format!("{} ({})", m.vm, m.flavor);
                let title = format!("{title} per migration ({unit})");
                if with_qemu {
                    let bars: Vec<(String, f64, Option<f64>)> =
                        d.migrations.iter().map(|m| (label(m), get(m).unwrap_or(0.0), get_qemu(m))).collect();
                    charts::paired_bars(&out.join(file), &title, unit, ("wire", "QEMU"), &bars)
                } else {
                    let bars: Vec<(String, f64)> =
                        d.migrations.iter().map(|m| (label(m), get(m).unwrap_or(0.0))).collect();
                    charts::bars(&out.join(file), &title, unit, &bars)
                }
                .map_err(werr(&out.join(file)))?;
                let _ = write!(h, "<img class=\"bars\" src=\"{file}\" alt=\"{title} per migration\">");
            }
            let flavor_file = file.replace("migration-", "flavor-");
            let groups: Vec<(String, f64)> = by_flavor(&d.migrations)
                .into_iter()
                .map(|(f, n, means)| (format!("{f} (n={n})"), means[k].unwrap_or(0.0) * scale))
                .collect();
            let title = format!("{title} by flavor, mean ({unit})");
            if with_qemu {
                let paired: Vec<(String, f64, Option<f64>)> = groups
                    .into_iter()
                    .zip(&qemu_means)
                    .map(|((label, wire), (_, _, q))| (label, wire, q[k].map(|v| v * scale)))
                    .collect();
                charts::paired_bars(&out.join(&flavor_file), &title, unit, ("wire", "QEMU"), &paired)
            } else {
                charts::bars(&out.join(&flavor_file), &title, unit, &groups)
            }
            .map_err(werr(&out.join(&flavor_file)))?;
            let _ = write!(h, "<img class=\"bars\" src=\"{flavor_file}\" alt=\"{title} by flavor\">");
        }
    }

    // One chart per VM that did something.
    h += "<h2 id=\"vms-h\">VMs that did something</h2>";
    if active.is_empty() {
        h += "<p>None: no level changes, actions, migrations, RTT peaks or IDS alerts.</p>";
    } else if active.len() > charted.len() {
        let _ = write!(
            h,
            "<p class=\"note\">{} VMs did something; charts for the {} most severe (HIGH, then MEDIUM, then acted on, \
             earliest first). The others are in the tables above.</p>",
            active.len(),
            charted.len()
        );
    }
    if lines.medium_bps.is_none() && !charted.is_empty() {
        h += "<p><small>No thresholds drawn: run with <code>--rules</code> to draw them.</small></p>";
    }
    for a in &charted {
        let file = vm_file(a.mac);
        charts::vm(&out.join(&file), &d, a.s, &a.marks, lines).map_err(werr(&out.join(&file)))?;
        let _ = write!(
            h,
            "<h3 id=\"{file}\">{} <small>{} · highest {}</small></h3><img src=\"{file}\" alt=\"{}\">",
            esc(&a.s.name),
            esc(a.mac),
            LEVEL_NAMES[a.s.max_level() as usize],
            esc(&a.s.name)
        );
        if a.s.windows.is_empty() {
            h += "<p><small>Levels only: run with <code>--vm-windows</code> for the rates of each window.</small></p>";
        }
        vm_events(&mut h, &d, a.mac, a.s, &at);
    }

    // Every other VM, one line each.
    let busy: std::collections::BTreeSet<&str> = active.iter().map(|a| a.mac).collect();
    let quiet: Vec<(&String, &VmSeries)> = d.vms.iter().filter(|(mac, _)| !busy.contains(mac.as_str())).collect();
    let _ = write!(h, "<h2 id=\"quiet-h\">Quiet VMs ({})</h2>", quiet.len());
    if quiet.is_empty() {
        h += "<p>None.</p>";
    } else {
        h += "<p><small>No level change, action, migration, RTT peak or IDS alert. Peaks are of one window \
              (with <code>--vm-windows</code>); totals from <code>vm_stats</code>.</small></p>\
              <table id=\"quiet\"><tr><th>VM</th><th>MAC</th><th>in rules</th><th>windows</th><th>peak tx</th>\
              <th>peak rx</th><th>peak pps</th><th>tx</th><th>rx</th><th>RTT samples</th><th>RTT max</th></tr>";
        for (mac, s) in quiet {
            let peak = |f: fn(&read::Window) -> f64| s.windows.iter().map(f).fold(0.0f64, f64::max);
            let w = !s.windows.is_empty();
            let st = s.stats.as_ref();
            let dash = || "–".to_string();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&s.name),
                esc(mac),
                st.map_or_else(dash, |st| if st.known { "yes".into() } else { "no".into() }),
                s.windows.len(),
                if w { si(peak(|w| w.tx_bps), "bit/s") } else { dash() },
                if w { si(peak(|w| w.rx_bps), "bit/s") } else { dash() },
                if w { si(peak(|w| w.tx_pps.max(w.rx_pps)), "pps") } else { dash() },
                st.map_or_else(dash, |st| bytes(st.tx_bytes)),
                st.map_or_else(dash, |st| bytes(st.rx_bytes)),
                st.map_or_else(dash, |st| st.rtt_samples.to_string()),
                st.and_then(|st| st.rtt_max_ms).map_or_else(dash, ms),
            );
        }
        h += "</table>";
    }
    h += "</body></html>\n";
    let page = out.join("index.html");
    std::fs::write(&page, h).map_err(|e| ReportError::Write { path: page.clone(), msg: e.to_string() })?;
    Ok(Written { page, notes: d.notes })
}

/// The table of one VM's own events under its chart.
fn vm_events(h: &mut String, d: &Data, mac: &str, s: &VmSeries, at: &dyn Fn(i64) -> String) {
    let mut rows: Vec<(i64, u8, String, String)> = Vec::new();
    for l in &s.levels {
        rows.push((
            l.us,
            0,
            format!("level {} → {}", LEVEL_NAMES[l.from as usize], LEVEL_NAMES[l.to as usize]),
            why(l, s),
        ));
    }
    for a in d.alerts.iter().filter(|a| a.victim_mac.as_deref() == Some(mac)) {
        rows.push((a.us, 1, format!("IDS alert sid {}", a.sid), format!("{} (from {})", esc(&a.msg), esc(&a.src))));
    }
    for v in d.evacuations.iter().filter(|v| v.vms.iter().any(|x| x == mac)) {
        rows.push((
            v.us,
            2,
            format!("evacuation of {}", esc(&v.hypervisor)),
            format!("trigger {}", esc(v.trigger.as_str())),
        ));
    }
    for a in d.actions.iter().filter(|a| a.mac == mac) {
        let to = a.destination.as_deref().map_or_else(String::new, |t| format!(" → {}", esc(t)));
        rows.push((
            a.us,
            3,
            format!("action {}{to}", esc(a.kind.as_str())),
            format!("{}, {}", esc(&a.outcome.to_string()), esc(a.reason.as_str())),
        ));
    }
    for m in d.migrations.iter().filter(|m| m.mac == mac) {
        rows.push((
            m.us,
            4,
            format!("migration {} → {}", esc(&m.from), esc(&m.to)),
            format!(
                "downtime {}, total {}, {} moved",
                m.downtime_ms.map_or_else(|| "–".into(), ms),
                m.total_ms.map_or_else(|| "–".into(), ms),
                m.bytes.map_or_else(|| "–".into(), bytes)
            ),
        ));
    }
    rows.sort();
    let more = rows.len().saturating_sub(MAX_VM_EVENTS);
    *h += "<table class=\"events\"><tr><th>at</th><th>what</th><th>detail</th></tr>";
    for (us, _, what, detail) in rows.iter().take(MAX_VM_EVENTS) {
        let _ = write!(h, "<tr><td>{}</td><td>{what}</td><td class=\"w\">{detail}</td></tr>", at(*us));
    }
    if !s.peaks.is_empty() {
        let (lo, hi) = s.peaks.iter().fold((u64::MAX, 0), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let max = s.peaks.iter().filter_map(|p| p.2).reduce(f64::max);
        let first = d.us(s.peaks[0].0);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>RTT peaks</td><td class=\"w\">{} windows with too many peaks ({}–{} each), max {}</td></tr>",
            at(first),
            s.peaks.len(),
            lo,
            hi,
            max.map_or_else(|| "–".into(), ms)
        );
    }
    if more > 0 {
        let _ = write!(h, "<tr><td colspan=\"3\">… and {more} more</td></tr>");
    }
    *h += "</table>";
}
