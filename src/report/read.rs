//! Reading an events file into what the report draws: per-VM series, migrations, actions, alerts, evacuations, the summary.

use super::ReportError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One window of one VM (a `vm_window` event; `t` is its end).
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

/// A `level` event.
#[derive(Clone, Debug)]
pub(crate) struct LevelChange {
    pub us: i64,
    pub t: f64,
    pub from: u8,
    pub to: u8,
    pub reason: String,
    pub direction: Option<String>,
    pub bps: f64,
    pub pps: f64,
    pub horizon_bytes: Option<f64>,
    pub limit_bytes: Option<f64>,
    pub hypervisor: Option<String>,
}

/// A `vm_stats` event: the VM's totals at the end of a replay.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub known: bool,
    pub tx_bytes: f64,
    pub rx_bytes: f64,
    pub rtt_samples: u64,
    pub rtt_max_ms: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct VmSeries {
    pub name: String,
    pub windows: Vec<Window>,
    pub levels: Vec<LevelChange>,
    /// `rtt_peaks` windows: time (window end), peaks, max ms.
    pub peaks: Vec<(f64, u64, f64)>,
    /// `rtt_sample` events: time, ms.
    pub samples: Vec<(f64, f64)>,
    pub stats: Option<Stats>,
}

impl VmSeries {
    /// The highest level it reached.
    pub fn max_level(&self) -> u8 {
        self.levels.iter().map(|l| l.to).chain(self.windows.iter().map(|w| w.level)).max().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Migration {
    pub us: i64,
    pub t: f64,
    pub mac: String,
    pub vm: String,
    pub flavor: String,
    pub from: String,
    pub to: String,
    pub signature: String,
    pub downtime_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub bytes: Option<f64>,
    /// The hypervisor's own figures for the same migration (downtime,
    /// total, bytes), from a reference file (`report --qemu-stats`).
    pub qemu: Option<[Option<f64>; 3]>,
}

#[derive(Clone, Debug)]
pub(crate) struct Act {
    pub us: i64,
    pub t: f64,
    pub mac: String,
    pub vm: String,
    /// `alert`, `quarantine` or `migrate`.
    pub kind: String,
    pub destination: Option<String>,
    /// `queued`, `dropped`, … or, for a held action, `held: BECAUSE`.
    pub outcome: String,
    pub held: bool,
    pub level: String,
    pub reason: String,
    pub note: String,
}

/// An `ids_alert` event.
#[derive(Clone, Debug)]
pub(crate) struct Alert {
    pub us: i64,
    pub t: f64,
    pub sid: u64,
    pub severity: u64,
    pub msg: String,
    pub src: String,
    pub victim: String,
    pub victim_mac: Option<String>,
    pub victim_vm: Option<String>,
    pub victim_hypervisor: Option<String>,
    pub outcome: String,
}

/// An `evacuation` event.
#[derive(Clone, Debug)]
pub(crate) struct Evacuation {
    pub us: i64,
    pub t: f64,
    pub hypervisor: String,
    pub trigger: String,
    pub sid: Option<u64>,
    /// The VMs of its plan (MACs).
    pub vms: Vec<String>,
    pub migrate: u64,
    pub held: u64,
    pub skipped: u64,
    pub no_destination: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Data {
    /// The first event's time (µs since the epoch); charts count seconds from it.
    pub t0_us: i64,
    /// The last event's time, in seconds since the first.
    pub t_end: f64,
    pub vms: BTreeMap<String, VmSeries>,
    pub migrations: Vec<Migration>,
    pub actions: Vec<Act>,
    pub alerts: Vec<Alert>,
    pub evacuations: Vec<Evacuation>,
    /// `conflict` events by kind.
    pub conflicts: BTreeMap<String, u64>,
    /// The `summary` event, when the run wrote one.
    pub summary: Option<Value>,
    /// What the reader skipped and why (shown on stderr and on the page).
    pub notes: Vec<String>,
}

impl Data {
    pub fn us(&self, t: f64) -> i64 {
        self.t0_us + (t * 1e6).round() as i64
    }
}

pub(crate) fn level_num(v: &Value) -> u8 {
    match v.as_str() {
        Some("HIGH") => 2,
        Some("MEDIUM") => 1,
        _ => 0,
    }
}

pub(crate) const LEVEL_NAMES: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];

pub(crate) fn ts_us(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1000) as i64)
}

fn name_of(e: &Value) -> String {
    e["vm_name"].as_str().map_or_else(|| e["vm"].as_str().unwrap_or("?").to_string(), str::to_string)
}

fn str_of(e: &Value, k: &str) -> String {
    e[k].as_str().unwrap_or_default().to_string()
}

fn opt_str(e: &Value, k: &str) -> Option<String> {
    e[k].as_str().map(str::to_string)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The events of a file, with their times, in file order. A last line
/// without its newline that does not parse is a live file's line being
/// written: it is left out with a note. Every other bad line is an error
/// naming `file:line`.
fn parse(path: &Path, bytes: &[u8], notes: &mut Vec<String>) -> Result<Vec<(i64, Value)>, ReportError> {
    let mut events = Vec::new();
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let n = lines.len();
    for (i, raw) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        let last_unterminated = !complete && i + 1 == n;
        let bad = |msg: String| ReportError::Event { path: path.to_path_buf(), line: line_no, msg };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let parsed = match std::str::from_utf8(raw) {
            Err(e) => Err(bad(format!("not UTF-8 (a bad byte at column {})", e.valid_up_to() + 1))),
            Ok(s) if s.trim().is_empty() => continue,
            Ok(s) => serde_json::from_str::<Value>(s).map_err(|e| bad(format!("not a JSON event: {e}"))),
        };
        let v = match parsed {
            Ok(v) => v,
            Err(_) if last_unterminated => {
                notes.push(format!(
                    "{}:{line_no}: the last line has no newline and is not a whole event (a file still being \
                     written?); it was left out",
                    path.display()
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        if !v.is_object() {
            return Err(bad(format!("not a JSON object event ({})", kind_of(&v))));
        }
        if !v["type"].is_string() {
            return Err(bad("an event without a string `type`".into()));
        }
        let t = ts_us(&v["ts"]).ok_or_else(|| bad("no RFC 3339 `ts`".into()))?;
        events.push((t, v));
    }
    Ok(events)
}

/// The series of the event's VM, named as the event names it.
fn series<'a>(d: &'a mut Data, mac: &str, e: &Value) -> &'a mut VmSeries {
    let s = d.vms.entry(mac.to_string()).or_default();
    s.name = name_of(e);
    s
}

/// Reads an events file.
pub(crate) fn read(path: &Path) -> Result<Data, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    let mut d = Data::default();
    let events = parse(path, &bytes, &mut d.notes)?;
    let Some(t0) = events.iter().map(|(t, _)| *t).min() else {
        return Err(ReportError::Empty {
            path: path.to_path_buf(),
            why: if bytes.iter().all(u8::is_ascii_whitespace) { "the file is empty" } else { "no whole event in it" },
        });
    };
    d.t0_us = t0;
    let rel = |t: i64| (t - t0) as f64 / 1e6;
    for (us, e) in &events {
        let us = *us;
        let t = rel(us);
        d.t_end = d.t_end.max(t);
        let f = |k: &str| e[k].as_f64();
        let mac = e["vm"].as_str().unwrap_or("?").to_string();
        match e["type"].as_str().unwrap_or_default() {
            "vm_window" => {
                series(&mut d, &mac, e).windows.push(Window {
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
                series(&mut d, &mac, e).levels.push(LevelChange {
                    us,
                    t,
                    from: level_num(&e["from"]),
                    to: level_num(&e["to"]),
                    reason: str_of(e, "reason"),
                    direction: opt_str(e, "direction"),
                    bps: f("bps").unwrap_or(0.0),
                    pps: f("pps").unwrap_or(0.0),
                    horizon_bytes: f("horizon_bytes"),
                    limit_bytes: f("limit_bytes"),
                    hypervisor: opt_str(e, "hypervisor"),
                });
            }
            "rtt_peaks" => {
                let p = (t, e["peaks"].as_u64().unwrap_or(0), f("max_ms").unwrap_or(0.0));
                series(&mut d, &mac, e).peaks.push(p);
            }
            "rtt_sample" => {
                series(&mut d, &mac, e).samples.push((t, f("rtt_ms").unwrap_or(0.0)));
            }
            "vm_stats" => {
                series(&mut d, &mac, e).stats = Some(Stats {
                    known: e["known"].as_bool().unwrap_or(false),
                    tx_bytes: f("tx_bytes").unwrap_or(0.0),
                    rx_bytes: f("rx_bytes").unwrap_or(0.0),
                    rtt_samples: e["rtt_samples"].as_u64().unwrap_or(0),
                    rtt_max_ms: f("rtt_max_ms"),
                });
            }
            "migration" => {
                series(&mut d, &mac, e);
                d.migrations.push(Migration {
                    us,
                    t,
                    mac: mac.clone(),
                    vm: name_of(e),
                    flavor: match (e["flavor"].as_str(), e["ram_mb"].as_u64()) {
                        (Some(fl), _) => fl.to_string(),
                        (None, Some(r)) => format!("{r} MiB"),
                        (None, None) => "unknown".into(),
                    },
                    from: e["from_hypervisor"].as_str().unwrap_or("?").to_string(),
                    to: e["to_hypervisor"].as_str().unwrap_or("?").to_string(),
                    signature: str_of(e, "signature"),
                    downtime_ms: f("downtime_ms"),
                    total_ms: f("total_ms"),
                    bytes: f("bytes"),
                    qemu: None,
                })
            }
            kind @ ("action" | "action_held") => {
                series(&mut d, &mac, e);
                let held = kind == "action_held";
                d.actions.push(Act {
                    us,
                    t,
                    mac: mac.clone(),
                    vm: name_of(e),
                    kind: e["action"].as_str().unwrap_or("?").to_string(),
                    destination: opt_str(e, "destination"),
                    outcome: if held { format!("held: {}", str_of(e, "held_because")) } else { str_of(e, "outcome") },
                    held,
                    level: str_of(e, "level"),
                    reason: str_of(e, "reason"),
                    note: str_of(e, "note"),
                })
            }
            "ids_alert" => d.alerts.push(Alert {
                us,
                t,
                sid: e["sid"].as_u64().unwrap_or(0),
                severity: e["severity"].as_u64().unwrap_or(0),
                msg: str_of(e, "msg"),
                src: str_of(e, "src"),
                victim: str_of(e, "victim"),
                victim_mac: opt_str(e, "victim_vm"),
                victim_vm: opt_str(e, "victim_vm_name").or_else(|| opt_str(e, "victim_vm")),
                victim_hypervisor: opt_str(e, "victim_hypervisor"),
                outcome: str_of(e, "outcome"),
            }),
            "evacuation" => {
                let u = |k: &str| e[k].as_u64().unwrap_or(0);
                d.evacuations.push(Evacuation {
                    us,
                    t,
                    hypervisor: e["hypervisor"].as_str().unwrap_or("?").to_string(),
                    trigger: e["trigger"].as_str().unwrap_or("?").to_string(),
                    sid: e["sid"].as_u64(),
                    vms: e["plan"]
                        .as_array()
                        .map(|p| p.iter().filter_map(|l| l["vm"].as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                    migrate: u("migrate"),
                    held: u("held"),
                    skipped: u("skipped"),
                    no_destination: u("no_destination"),
                })
            }
            "conflict" => *d.conflicts.entry(str_of(e, "kind")).or_default() += 1,
            "summary" => d.summary = Some(e.clone()),
            _ => {}
        }
    }
    Ok(d)
}

/// How far apart (µs) a reference line and the wire's migration may be.
pub(crate) const QEMU_MATCH_US: i64 = 10_000_000;

/// Reads QEMU's own figures (JSON lines, each `{"type":"qemu_migration",
/// "ts", "vm", "downtime_ms", "total_ms", "bytes"}`, `ts` when the
/// migration finished) and gives each to the wire's migration of the same
/// VM nearest in time, within 10 s, not yet given one. A line that matches
/// none is left out with a note; a line of another type is an error.
pub(crate) fn attach_qemu(path: &Path, d: &mut Data) -> Result<(), ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::Read { path: path.to_path_buf(), source: e })?;
    let mut notes = Vec::new();
    let lines = parse(path, &bytes, &mut notes)?;
    for (i, (us, v)) in lines.iter().enumerate() {
        if v["type"] != "qemu_migration" {
            return Err(ReportError::Event {
                path: path.to_path_buf(),
                line: i + 1,
                msg: format!("a reference line must be of type `qemu_migration`, not `{}`", str_of(v, "type")),
            });
        }
        let vm = v["vm"].as_str().unwrap_or("").to_ascii_lowercase();
        let best = d
            .migrations
            .iter_mut()
            .filter(|m| m.qemu.is_none() && m.mac.to_ascii_lowercase() == vm && (m.us - us).abs() <= QEMU_MATCH_US)
            .min_by_key(|m| (m.us - us).abs());
        match best {
            Some(m) => m.qemu = Some([v["downtime_ms"].as_f64(), v["total_ms"].as_f64(), v["bytes"].as_f64()]),
            None => notes.push(format!(
                "{}: QEMU's migration of {vm} at {} matches no migration on the wire within 10 s; left out",
                path.display(),
                str_of(v, "ts")
            )),
        }
    }
    d.notes.extend(notes);
    Ok(())
}

/// Per flavor, in name order: migrations counted and the mean of each
/// metric over the migrations that measured it (downtime, total, bytes).
pub(crate) fn by_flavor(m: &[Migration]) -> Vec<(String, usize, [Option<f64>; 3])> {
    by_flavor_of(m, |x, k| [x.downtime_ms, x.total_ms, x.bytes][k])
}

/// The same means of the reference's figures.
pub(crate) fn by_flavor_qemu(m: &[Migration]) -> Vec<(String, usize, [Option<f64>; 3])> {
    by_flavor_of(m, |x, k| x.qemu.and_then(|q| q[k]))
}

fn by_flavor_of(m: &[Migration], get: fn(&Migration, usize) -> Option<f64>) -> Vec<(String, usize, [Option<f64>; 3])> {
    let mut groups: BTreeMap<&str, Vec<&Migration>> = BTreeMap::new();
    for x in m {
        groups.entry(&x.flavor).or_default().push(x);
    }
    groups
        .into_iter()
        .map(|(f, v)| {
            let mean = |k: usize| {
                let xs: Vec<f64> = v.iter().filter_map(|m| get(m, k)).collect();
                (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
            };
            (f.to_string(), v.len(), [mean(0), mean(1), mean(2)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL: &str = r#"{"type":"level","ts":"2023-11-15T22:13:29.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"a","from":"LOW","to":"MEDIUM","reason":"rate","direction":"rx","bps":32007840,"pps":4010}"#;

    fn file(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("events.jsonl");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    #[test]
    fn a_half_written_last_line_is_left_out_with_a_note() {
        let text = format!("{LEVEL}\n{}", &LEVEL[..40]);
        let (_d, p) = file(text.as_bytes());
        let d = read(&p).unwrap();
        assert_eq!(d.vms["fa:16:3e:00:00:01"].levels.len(), 1);
        assert_eq!(d.notes.len(), 1);
        assert!(d.notes[0].ends_with(
            "events.jsonl:2: the last line has no newline and is not a whole event (a file still being written?); \
             it was left out"
        ));
        // A whole last event without its newline is read.
        let (_d, p) = file(LEVEL.as_bytes());
        let d = read(&p).unwrap();
        assert_eq!((d.vms.len(), d.notes.len()), (1, 0));
        // A broken line before the last is an error, not a note.
        let text = format!("{}\n{LEVEL}\n", &LEVEL[..40]);
        let (_d, p) = file(text.as_bytes());
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("events.jsonl:1: not a JSON event"), "{e}");
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error_with_its_line() {
        let mut bytes = format!("{LEVEL}\n{LEVEL}\n").into_bytes();
        bytes.extend_from_slice(b"{\"type\":\"level\",\"vm_name\":\"\xff\xfe\"}\n");
        let (_d, p) = file(&bytes);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.ends_with("events.jsonl:3: not UTF-8 (a bad byte at column 28)"), "{e}");
    }

    #[test]
    fn an_empty_file_is_an_error_that_says_so() {
        for (bytes, why) in
            [(&b""[..], "the file is empty"), (b"\n \n", "the file is empty"), (b"{\"type\":", "no whole event in it")]
        {
            let (_d, p) = file(bytes);
            let e = read(&p).unwrap_err();
            assert!(matches!(e, ReportError::Empty { .. }), "{e:?}");
            assert!(e.to_string().ends_with(&format!("events.jsonl: no events to report: {why}")), "{e}");
        }
    }

    #[test]
    fn a_line_that_is_not_an_object_event_is_an_error_with_its_line() {
        for (line, msg) in [
            ("[1,2]", "not a JSON object event (an array)"),
            ("42", "not a JSON object event (a number)"),
            ("{\"ts\":\"2023-11-15T22:13:29Z\"}", "an event without a string `type`"),
            ("{\"type\":\"level\"}", "no RFC 3339 `ts`"),
        ] {
            let (_d, p) = file(format!("{LEVEL}\n{line}\n").as_bytes());
            let e = read(&p).unwrap_err().to_string();
            assert!(e.ends_with(&format!("events.jsonl:2: {msg}")), "{e}");
        }
    }
}
