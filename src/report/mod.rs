//! Report: an HTML page with SVG charts (plotters) made from an events file: levels and rates, RTT, migrations by flavor, actions.
//!
//! `vmsentry report EVENTS.jsonl --out DIR` reads the events a run wrote and
//! draws, with the numbers in tables beside each chart (taken from the same
//! events, so they can be checked against them):
//! - per VM, its level over time on the rates of each window (`vm_window`
//!   events, written with `--vm-windows`; without them only the level's
//!   steps, from its `level` events) and the rules' thresholds;
//! - per VM with RTT samples, the window's median and maximum and the peak
//!   line, with the `rtt_peaks` windows marked;
//! - each `migration`'s downtime, total migration time and bytes moved, and
//!   the three grouped by flavor (the first paper's Figures 4, 5 and 6, which
//!   it measured from the hypervisor; here they are measured on the wire);
//! - the actions (and held actions, and evacuations) on a timeline.

mod charts;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    #[error("cannot write {path}: {msg}")]
    Write { path: PathBuf, msg: String },
}

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

/// One window of one VM.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    pub t: f64,
    pub tx_bps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub level: u8,
    pub rtt_p50: Option<f64>,
    pub rtt_max: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct VmSeries {
    pub name: String,
    pub windows: Vec<Window>,
    /// Level changes: time, new level, reason.
    pub levels: Vec<(f64, u8, String)>,
    /// `rtt_peaks` windows: time (window end), peaks, max ms.
    pub peaks: Vec<(f64, u64, f64)>,
    /// `rtt_sample` events: time, ms.
    pub samples: Vec<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub(crate) struct Migration {
    pub t: f64,
    pub vm: String,
    pub flavor: String,
    pub from: String,
    pub to: String,
    pub downtime_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub bytes: Option<f64>,
}

#[derive(Clone, Debug)]
pub(crate) struct Act {
    pub t: f64,
    pub vm: String,
    /// `alert`, `quarantine`, `migrate`, or `held`.
    pub kind: String,
    pub detail: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Data {
    /// The last event's time, in seconds since the first.
    pub t_end: f64,
    pub t0: String,
    pub vms: BTreeMap<String, VmSeries>,
    pub migrations: Vec<Migration>,
    pub actions: Vec<Act>,
    /// Evacuations: time, hypervisor, trigger, migrate, held, skipped, no destination.
    pub evacuations: Vec<(f64, String, String, u64, u64, u64, u64)>,
}

fn level_num(v: &Value) -> u8 {
    match v.as_str() {
        Some("HIGH") => 2,
        Some("MEDIUM") => 1,
        _ => 0,
    }
}

fn ts_us(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1000) as i64)
}

fn name_of(e: &Value) -> String {
    e["vm_name"].as_str().map_or_else(|| e["vm"].as_str().unwrap_or("?").to_string(), str::to_string)
}

/// Reads an events file.
pub(crate) fn read(path: &Path) -> Result<Data, ReportError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| ReportError::Event { path: path.to_path_buf(), line: i + 1, msg };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not a JSON event: {e}")))?;
        let t = ts_us(&v["ts"]).ok_or_else(|| bad("no RFC 3339 `ts`".into()))?;
        events.push((t, v));
    }
    let mut d = Data::default();
    let Some(&(t0, ref first)) = events.iter().min_by_key(|(t, _)| *t) else { return Ok(d) };
    d.t0 = first["ts"].as_str().unwrap_or_default().to_string();
    let rel = |t: i64| (t - t0) as f64 / 1e6;
    for (t, e) in &events {
        let t = rel(*t);
        d.t_end = d.t_end.max(t);
        let f = |k: &str| e[k].as_f64();
        match e["type"].as_str().unwrap_or_default() {
            "vm_window" => {
                let s = d.vms.entry(e["vm"].as_str().unwrap_or("?").to_string()).or_default();
                s.name = name_of(e);
                s.windows.push(Window {
                    t,
                    tx_bps: f("tx_bps").unwrap_or(0.0),
                    rx_bps: f("rx_bps").unwrap_or(0.0),
                    tx_pps: f("tx_pps").unwrap_or(0.0),
                    rx_pps: f("rx_pps").unwrap_or(0.0),
                    level: level_num(&e["level"]),
                    rtt_p50: f("rtt_p50_ms"),
                    rtt_max: f("rtt_max_ms"),
                });
            }
            "level" => {
                let s = d.vms.entry(e["vm"].as_str().unwrap_or("?").to_string()).or_default();
                s.name = name_of(e);
                s.levels.push((t, level_num(&e["to"]), e["reason"].as_str().unwrap_or_default().to_string()));
            }
            "rtt_peaks" => {
                let s = d.vms.entry(e["vm"].as_str().unwrap_or("?").to_string()).or_default();
                s.name = name_of(e);
                s.peaks.push((t, e["peaks"].as_u64().unwrap_or(0), f("max_ms").unwrap_or(0.0)));
            }
            "rtt_sample" => {
                let s = d.vms.entry(e["vm"].as_str().unwrap_or("?").to_string()).or_default();
                s.name = name_of(e);
                s.samples.push((t, f("rtt_ms").unwrap_or(0.0)));
            }
            "migration" => d.migrations.push(Migration {
                t,
                vm: name_of(e),
                flavor: match (e["flavor"].as_str(), e["ram_mb"].as_u64()) {
                    (Some(fl), _) => fl.to_string(),
                    (None, Some(r)) => format!("{r} MiB"),
                    (None, None) => "unknown".into(),
                },
                from: e["from_hypervisor"].as_str().unwrap_or("?").to_string(),
                to: e["to_hypervisor"].as_str().unwrap_or("?").to_string(),
                downtime_ms: f("downtime_ms"),
                total_ms: f("total_ms"),
                bytes: f("bytes"),
            }),
            "action" => d.actions.push(Act {
                t,
                vm: name_of(e),
                kind: e["action"].as_str().unwrap_or("?").to_string(),
                detail: match e["destination"].as_str() {
                    Some(to) => format!("to {to}"),
                    None => e["outcome"].as_str().unwrap_or_default().to_string(),
                },
                reason: e["reason"].as_str().unwrap_or_default().to_string(),
            }),
            "action_held" => d.actions.push(Act {
                t,
                vm: name_of(e),
                kind: "held".into(),
                detail: format!(
                    "{} held: {}",
                    e["action"].as_str().unwrap_or("?"),
                    e["held_because"].as_str().unwrap_or_default()
                ),
                reason: e["reason"].as_str().unwrap_or_default().to_string(),
            }),
            "evacuation" => {
                let u = |k: &str| e[k].as_u64().unwrap_or(0);
                d.evacuations.push((
                    t,
                    e["hypervisor"].as_str().unwrap_or("?").to_string(),
                    e["trigger"].as_str().unwrap_or("?").to_string(),
                    u("migrate"),
                    u("held"),
                    u("skipped"),
                    u("no_destination"),
                ))
            }
            _ => {}
        }
    }
    Ok(d)
}

/// Per flavor, in name order: migrations counted and the mean of each
/// metric over the migrations that measured it (downtime, total, bytes).
pub(crate) fn by_flavor(m: &[Migration]) -> Vec<(String, usize, [Option<f64>; 3])> {
    let mut groups: BTreeMap<&str, Vec<&Migration>> = BTreeMap::new();
    for x in m {
        groups.entry(&x.flavor).or_default().push(x);
    }
    groups
        .into_iter()
        .map(|(f, v)| {
            let mean = |get: fn(&Migration) -> Option<f64>| {
                let xs: Vec<f64> = v.iter().filter_map(|m| get(m)).collect();
                (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
            };
            (f.to_string(), v.len(), [mean(|m| m.downtime_ms), mean(|m| m.total_ms), mean(|m| m.bytes)])
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x}"))
}

/// Writes `DIR/index.html` and its charts; returns the page's path.
pub fn write(events: &Path, out: &Path, lines: &Lines) -> Result<PathBuf, ReportError> {
    let d = read(events)?;
    std::fs::create_dir_all(out).map_err(|e| ReportError::Write { path: out.to_path_buf(), msg: e.to_string() })?;
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |msg: String| ReportError::Write { path: p.clone(), msg }
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vmsentry report</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}\
         img{{max-width:100%}}</style></head><body><h1>vmsentry report</h1>\
         <p>Events: <code>{}</code>. Times are seconds since {}.</p>",
        esc(&events.display().to_string()),
        esc(&d.t0)
    );

    h += "<h2>Levels and rates</h2>";
    for (i, (mac, s)) in d.vms.iter().enumerate() {
        if s.windows.is_empty() && s.levels.is_empty() {
            continue;
        }
        let file = format!("vm-{i}-rates.svg");
        charts::rates(&out.join(&file), s, lines).map_err(werr(&out.join(&file)))?;
        let _ = write!(h, "<h3>{} <small>{}</small></h3><img src=\"{file}\">", esc(&s.name), esc(mac));
        if s.windows.is_empty() {
            h += "<p>Levels only: run with <code>--vm-windows</code> for the rates of each window.</p>";
        }
        if !s.levels.is_empty() {
            h += "<table><tr><th>level change at (s)</th><th>to</th><th>reason</th></tr>";
            for (t, l, r) in &s.levels {
                let _ = write!(
                    h,
                    "<tr><td>{t}</td><td>{}</td><td>{}</td></tr>",
                    ["LOW", "MEDIUM", "HIGH"][*l as usize],
                    esc(r)
                );
            }
            h += "</table>";
        }
    }

    h += "<h2>RTT</h2>";
    let mut any_rtt = false;
    for (i, (_, s)) in d.vms.iter().enumerate() {
        if !s.windows.iter().any(|w| w.rtt_p50.is_some()) && s.samples.is_empty() && s.peaks.is_empty() {
            continue;
        }
        any_rtt = true;
        let file = format!("vm-{i}-rtt.svg");
        charts::rtt(&out.join(&file), s, lines).map_err(werr(&out.join(&file)))?;
        let _ = write!(h, "<h3>{}</h3><img src=\"{file}\">", esc(&s.name));
        if !s.peaks.is_empty() {
            h += "<table><tr><th>peaks in the window ending at (s)</th><th>peaks</th><th>max ms</th></tr>";
            for (t, n, m) in &s.peaks {
                let _ = write!(h, "<tr><td>{t}</td><td>{n}</td><td>{m}</td></tr>");
            }
            h += "</table>";
        }
    }
    if !any_rtt {
        h += "<p>No RTT in these events.</p>";
    }

    h += "<h2>Migrations</h2>";
    if d.migrations.is_empty() {
        h += "<p>No migrations in these events.</p>";
    } else {
        for (k, (file, title, unit)) in [
            ("migration-downtime.svg", "Downtime", "ms"),
            ("migration-total.svg", "Total migration time", "ms"),
            ("migration-bytes.svg", "Bytes moved", "MB"),
        ]
        .into_iter()
        .enumerate()
        {
            let scale = if unit == "MB" { 1e-6 } else { 1.0 };
            let get = |m: &Migration| [m.downtime_ms, m.total_ms, m.bytes][k].map(|v| v * scale);
            let bars: Vec<(String, f64)> =
                d.migrations.iter().map(|m| (format!("{} ({})", m.vm, m.flavor), get(m).unwrap_or(0.0))).collect();
            charts::bars(&out.join(file), &format!("{title} per migration ({unit})"), unit, &bars)
                .map_err(werr(&out.join(file)))?;
            let flavor_file = file.replace("migration-", "flavor-");
            let groups: Vec<(String, f64)> = by_flavor(&d.migrations)
                .into_iter()
                .map(|(f, n, means)| (format!("{f} (n={n})"), means[k].unwrap_or(0.0) * scale))
                .collect();
            charts::bars(&out.join(&flavor_file), &format!("{title} by flavor, mean ({unit})"), unit, &groups)
                .map_err(werr(&out.join(&flavor_file)))?;
            let _ = write!(h, "<img src=\"{file}\"><img src=\"{flavor_file}\">");
        }
        h += "<table id=\"migrations\"><tr><th>VM</th><th>at (s)</th><th>flavor</th><th>from</th><th>to</th>\
              <th>downtime_ms</th><th>total_ms</th><th>bytes</th></tr>";
        for m in &d.migrations {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.vm),
                m.t,
                esc(&m.flavor),
                esc(&m.from),
                esc(&m.to),
                num(m.downtime_ms),
                num(m.total_ms),
                num(m.bytes)
            );
        }
        h += "</table><table id=\"flavors\"><tr><th>flavor</th><th>migrations</th><th>mean downtime_ms</th>\
              <th>mean total_ms</th><th>mean bytes</th></tr>";
        for (f, n, m) in by_flavor(&d.migrations) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{n}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f),
                num(m[0]),
                num(m[1]),
                num(m[2])
            );
        }
        h += "</table>";
    }

    h += "<h2>Actions</h2>";
    if d.actions.is_empty() && d.evacuations.is_empty() {
        h += "<p>No actions in these events.</p>";
    } else {
        charts::actions(&out.join("actions.svg"), &d).map_err(werr(&out.join("actions.svg")))?;
        h += "<img src=\"actions.svg\"><table id=\"actions\"><tr><th>VM</th><th>at (s)</th><th>action</th>\
              <th>detail</th><th>reason</th></tr>";
        for a in &d.actions {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.vm),
                a.t,
                esc(&a.kind),
                esc(&a.detail),
                esc(&a.reason)
            );
        }
        h += "</table>";
        if !d.evacuations.is_empty() {
            h += "<table id=\"evacuations\"><tr><th>hypervisor</th><th>at (s)</th><th>trigger</th><th>migrate</th>\
                  <th>held</th><th>skipped</th><th>no destination</th></tr>";
            for (t, hv, tr, m, he, s, nd) in &d.evacuations {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{t}</td><td>{}</td><td>{m}</td><td>{he}</td><td>{s}</td><td>{nd}</td></tr>",
                    esc(hv),
                    esc(tr)
                );
            }
            h += "</table>";
        }
    }
    h += "</body></html>\n";
    let page = out.join("index.html");
    std::fs::write(&page, h).map_err(|e| ReportError::Write { path: page.clone(), msg: e.to_string() })?;
    Ok(page)
}
