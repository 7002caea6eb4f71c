//! Reading an events file into what the report draws: per-VM series, migrations, actions, alerts, evacuations, the summary.

use super::ReportError;
use crate::action::{ActionKind, Submitted};
use crate::detect::{Direction, Level, Reason};
use crate::event::{AlertOutcome, ConflictKind, Event, HoldReason, SummaryEvent, Trigger};
use crate::trust::Verdict;
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
    pub reason: Reason,
    pub direction: Option<Direction>,
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
    /// `rtt_peaks` windows: time (window end), peaks, max ms (null: none measured).
    pub peaks: Vec<(f64, u64, Option<f64>)>,
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
    pub signature: Verdict,
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
    pub kind: ActionKind,
    pub destination: Option<String>,
    pub outcome: ActOutcome,
    pub held: bool,
    pub level: Level,
    pub reason: Reason,
    pub note: String,
}

/// What became of an action: handed on (`queued`, `dropped`, …) or held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActOutcome {
    Submitted(Submitted),
    Held(HoldReason),
}

impl std::fmt::Display for ActOutcome {
    /// `queued`, `dropped`, … or, for a held action, `held: BECAUSE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActOutcome::Submitted(s) => f.write_str(s.as_str()),
            ActOutcome::Held(b) => write!(f, "held: {}", b.as_str()),
        }
    }
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
    pub outcome: AlertOutcome,
}

/// An `evacuation` event.
#[derive(Clone, Debug)]
pub(crate) struct Evacuation {
    pub us: i64,
    pub t: f64,
    pub hypervisor: String,
    pub trigger: Trigger,
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
    pub conflicts: BTreeMap<ConflictKind, u64>,
    /// The `summary` event, when the run wrote one.
    pub summary: Option<SummaryEvent>,
    /// What the reader skipped and why (shown on stderr and on the page).
    pub notes: Vec<String>,
}

impl Data {
    /// The time `t` seconds after the first event. [`read`] keeps every
    /// time within [`MAX_ABS_US`], so this is within range; it saturates
    /// rather than wrap if ever called with a `t` from elsewhere.
    pub fn us(&self, t: f64) -> i64 {
        self.t0_us.saturating_add((t * 1e6).round() as i64)
    }
}

/// The times a report draws: within 2^53 µs (about 285 years) of the
/// epoch, so that every difference of two is exact as an `f64` and no sum
/// overflows. The events can stamp any 64-bit time (`@Nus`); an event
/// outside this range is an error naming its line.
pub(crate) const MAX_ABS_US: i64 = 1 << 53;

pub(crate) const LEVEL_NAMES: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];

fn name_of(vm_name: &Option<String>, vm: &str) -> String {
    vm_name.clone().unwrap_or_else(|| vm.to_string())
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

/// Why a line that is not an [`Event`] is not one, and whether it is JSON at all.
fn diagnose(s: &str, typed: serde_json::Error) -> (bool, String) {
    match serde_json::from_str::<Value>(s) {
        Err(e) => (false, format!("not a JSON event: {e}")),
        Ok(v) if !v.is_object() => (true, format!("not a JSON object event ({})", kind_of(&v))),
        Ok(v) if !v["type"].is_string() => (true, "an event without a string `type`".into()),
        Ok(_) => (true, format!("not a vmsentry event: {typed}")),
    }
}

/// The events of a file, in file order. A last line without its newline
/// that is not JSON is a live file's line being written: it is left out
/// with a note. Every other bad line (not JSON, or an unknown type, field or
/// value) is an error naming `file:line`.
fn parse(path: &Path, bytes: &[u8], notes: &mut Vec<String>) -> Result<Vec<(usize, Event)>, ReportError> {
    let mut events = Vec::new();
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let n = lines.len();
    for (i, raw) in lines.into_iter().enumerate() {
        let line_no = i + 1;
        let last_unterminated = !complete && i + 1 == n;
        let bad = |msg: String| ReportError::Event { path: path.to_path_buf(), line: line_no, msg };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let s = match std::str::from_utf8(raw) {
            Err(e) => return Err(bad(format!("not UTF-8 (a bad byte at column {})", e.valid_up_to() + 1))),
            Ok(s) if s.trim().is_empty() => continue,
            Ok(s) => s,
        };
        match Event::from_json(s) {
            Ok(e) => {
                check_times(&e).map_err(bad)?;
                events.push((line_no, e))
            }
            Err(typed) => match diagnose(s, typed) {
                (false, _) if last_unterminated => notes.push(format!(
                    "{}:{line_no}: the last line has no newline and is not a whole event (a file still being \
                     written?); it was left out",
                    path.display()
                )),
                (_, msg) => return Err(bad(msg)),
            },
        }
    }
    Ok(events)
}

/// An event's times are within what the report draws ([`MAX_ABS_US`]),
/// and a summary's `duration_s` is a span of them.
fn check_times(e: &Event) -> Result<(), String> {
    let ts = e.ts().as_micros();
    if !(-MAX_ABS_US..=MAX_ABS_US).contains(&ts) {
        return Err(format!(
            "`ts` {} is outside the times a report draws (within 2^53 µs of 1970, years 1685 to 2255)",
            e.ts()
        ));
    }
    if let Event::Summary(s) = e {
        let max_s = (2 * MAX_ABS_US) as f64 / 1e6;
        if !(s.duration_s.is_finite() && (0.0..=max_s).contains(&s.duration_s)) {
            return Err(format!(
                "`duration_s` {:?} is not a span of packet time (from 0 to {} s)",
                s.duration_s,
                2 * MAX_ABS_US / 1_000_000
            ));
        }
        // The packets' span starts `duration_s` before the summary's `ts`.
        if (ts as f64 - s.duration_s * 1e6) < -(MAX_ABS_US as f64) {
            return Err(format!(
                "`duration_s` {:?} puts the start of the packets before the times a report draws",
                s.duration_s
            ));
        }
    }
    Ok(())
}

/// The series of the event's VM, named as the event names it.
fn series<'a>(d: &'a mut Data, mac: &str, vm_name: &Option<String>) -> &'a mut VmSeries {
    let s = d.vms.entry(mac.to_string()).or_default();
    s.name = name_of(vm_name, mac);
    s
}

/// Reads an events file.
pub(crate) fn read(path: &Path) -> Result<Data, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    let mut d = Data::default();
    let events = parse(path, &bytes, &mut d.notes)?;
    let Some(t0) = events.iter().map(|(_, e)| e.ts().as_micros()).min() else {
        return Err(ReportError::Empty {
            path: path.to_path_buf(),
            why: if bytes.iter().all(u8::is_ascii_whitespace) { "the file is empty" } else { "no whole event in it" },
        });
    };
    d.t0_us = t0;
    let rel = |t: i64| (t - t0) as f64 / 1e6;
    let f = |x: u64| x as f64;
    for (_, e) in events {
        let us = e.ts().as_micros();
        let t = rel(us);
        d.t_end = d.t_end.max(t);
        match e {
            Event::VmWindow(w) => {
                let mac = w.vm.to_string();
                series(&mut d, &mac, &w.vm_name).windows.push(Window {
                    t,
                    tx_bps: f(w.tx_bps),
                    rx_bps: f(w.rx_bps),
                    tx_pps: f(w.tx_pps),
                    rx_pps: f(w.rx_pps),
                    level: w.level.as_u8(),
                    rtt_p50: w.rtt_p50_ms,
                    rtt_max: w.rtt_max_ms,
                });
            }
            Event::Level(l) => {
                let mac = l.vm.to_string();
                series(&mut d, &mac, &l.vm_name).levels.push(LevelChange {
                    us,
                    t,
                    from: l.from.as_u8(),
                    to: l.to.as_u8(),
                    reason: l.reason,
                    direction: l.direction,
                    bps: f(l.bps),
                    pps: f(l.pps),
                    horizon_bytes: l.horizon_bytes.map(f),
                    limit_bytes: l.limit_bytes.map(f),
                    hypervisor: l.hypervisor,
                });
            }
            Event::RttPeaks(p) => {
                let mac = p.vm.to_string();
                series(&mut d, &mac, &p.vm_name).peaks.push((t, u64::from(p.peaks), p.max_ms));
            }
            Event::RttSample(r) => {
                let mac = r.vm.to_string();
                series(&mut d, &mac, &r.vm_name).samples.push((t, r.rtt_ms));
            }
            Event::VmStats(v) => {
                let mac = v.vm.to_string();
                series(&mut d, &mac, &v.vm_name).stats = Some(Stats {
                    known: v.known,
                    tx_bytes: f(v.tx_bytes),
                    rx_bytes: f(v.rx_bytes),
                    rtt_samples: v.rtt_samples,
                    rtt_max_ms: v.rtt_max_ms,
                });
            }
            Event::Migration(m) => {
                let mac = m.vm.to_string();
                series(&mut d, &mac, &m.vm_name);
                d.migrations.push(Migration {
                    us,
                    t,
                    vm: name_of(&m.vm_name, &mac),
                    mac,
                    flavor: match (m.flavor, m.ram_mb) {
                        (Some(fl), _) => fl,
                        (None, Some(r)) => format!("{r} MiB"),
                        (None, None) => "unknown".into(),
                    },
                    from: m.from_hypervisor.unwrap_or_else(|| "?".into()),
                    to: m.to_hypervisor.unwrap_or_else(|| "?".into()),
                    signature: m.signature,
                    downtime_ms: m.downtime_ms,
                    total_ms: m.total_ms,
                    bytes: m.bytes.map(f),
                    qemu: None,
                })
            }
            Event::Action(a) => {
                let mac = a.vm.to_string();
                series(&mut d, &mac, &a.vm_name);
                d.actions.push(Act {
                    us,
                    t,
                    vm: name_of(&a.vm_name, &mac),
                    mac,
                    kind: a.action,
                    destination: a.destination,
                    outcome: ActOutcome::Submitted(a.outcome),
                    held: false,
                    level: a.level,
                    reason: a.reason,
                    note: a.note.unwrap_or_default(),
                })
            }
            Event::ActionHeld(h) => {
                let mac = h.vm.to_string();
                series(&mut d, &mac, &h.vm_name);
                d.actions.push(Act {
                    us,
                    t,
                    vm: name_of(&h.vm_name, &mac),
                    mac,
                    kind: h.action,
                    destination: None,
                    outcome: ActOutcome::Held(h.held_because),
                    held: true,
                    level: h.level,
                    reason: h.reason,
                    note: String::new(),
                })
            }
            Event::IdsAlert(a) => d.alerts.push(Alert {
                us,
                t,
                sid: a.sid,
                severity: u64::from(a.severity),
                msg: a.msg,
                src: a.src.to_string(),
                victim: a.victim.to_string(),
                victim_mac: a.victim_vm.map(|m| m.to_string()),
                victim_vm: a.victim_vm_name.or_else(|| a.victim_vm.map(|m| m.to_string())),
                victim_hypervisor: a.victim_hypervisor,
                outcome: a.outcome,
            }),
            Event::Evacuation(ev) => d.evacuations.push(Evacuation {
                us,
                t,
                hypervisor: ev.hypervisor,
                trigger: ev.trigger,
                sid: ev.sid,
                vms: ev.plan.iter().map(|l| l.vm.to_string()).collect(),
                migrate: u64::from(ev.migrate),
                held: u64::from(ev.held),
                skipped: u64::from(ev.skipped),
                no_destination: u64::from(ev.no_destination),
            }),
            Event::Conflict(c) => *d.conflicts.entry(c.kind).or_default() += 1,
            Event::Summary(s) => d.summary = Some(s),
            Event::GateDenied(_) | Event::Sensor(_) => {}
        }
    }
    Ok(d)
}

/// How far apart (µs) a reference line and the wire's migration may be.
pub(crate) const QEMU_MATCH_US: u64 = 10_000_000;

/// One line of a `--qemu-stats` file: QEMU's own figures for a migration.
#[derive(serde::Deserialize)]
struct QemuLine {
    #[serde(rename = "type")]
    kind: String,
    /// When the migration finished.
    ts: crate::vocab::PacketTime,
    vm: String,
    downtime_ms: Option<f64>,
    total_ms: Option<f64>,
    bytes: Option<f64>,
}

/// Reads QEMU's own figures (JSON lines, each `{"type":"qemu_migration",
/// "ts", "vm", "downtime_ms", "total_ms", "bytes"}`, `ts` when the
/// migration finished; other fields are ignored) and gives each to the
/// wire's migration of the same VM nearest in time, within 10 s, not yet
/// given one. A line that matches none is left out with a note; a line
/// that is not such a line is an error naming `file:line`.
pub(crate) fn attach_qemu(path: &Path, d: &mut Data) -> Result<(), ReportError> {
    let text = std::fs::read(path).map_err(|source| ReportError::Read { path: path.to_path_buf(), source })?;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let bad = |msg: String| ReportError::Event { path: path.to_path_buf(), line: i + 1, msg };
        let s = std::str::from_utf8(raw)
            .map_err(|e| bad(format!("not UTF-8 (a bad byte at column {})", e.valid_up_to() + 1)))?;
        if s.trim().is_empty() {
            continue;
        }
        let q: QemuLine = serde_json::from_str(s).map_err(|e| bad(format!("not a QEMU figures line: {e}")))?;
        if q.kind != "qemu_migration" {
            return Err(bad(format!("a reference line must be of type `qemu_migration`, not `{}`", q.kind)));
        }
        let us = q.ts.as_micros();
        let vm = q.vm.to_ascii_lowercase();
        let best = d
            .migrations
            .iter_mut()
            .filter(|m| m.qemu.is_none() && m.mac.to_ascii_lowercase() == vm && m.us.abs_diff(us) <= QEMU_MATCH_US)
            .min_by_key(|m| m.us.abs_diff(us));
        match best {
            Some(m) => m.qemu = Some([q.downtime_ms, q.total_ms, q.bytes]),
            None => d.notes.push(format!(
                "{}: QEMU's migration of {vm} at {} matches no migration on the wire within 10 s; left out",
                path.display(),
                q.ts.rfc3339()
            )),
        }
    }
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

    const LEVEL: &str = r#"{"type":"level","ts":"2023-11-15T22:13:29.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"a","from":"LOW","to":"MEDIUM","reason":"rate","direction":"rx","bps":32007840,"pps":4010,"window_start":"2023-11-15T22:13:28.000000Z","hypervisor":null}"#;

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
            ("{\"type\":\"level\"}", "not a vmsentry event: missing field `ts`"),
        ] {
            let (_d, p) = file(format!("{LEVEL}\n{line}\n").as_bytes());
            let e = read(&p).unwrap_err().to_string();
            assert!(e.ends_with(&format!("events.jsonl:2: {msg}")), "{e}");
        }
    }

    #[test]
    fn a_renamed_field_an_unknown_type_or_bad_json_is_an_error_with_its_line() {
        for (line, msg) in [
            (LEVEL.replace("\"bps\":", "\"bits_ps\":"), "not a vmsentry event: unknown field `bits_ps`"),
            (
                LEVEL.replace("\"type\":\"level\"", "\"type\":\"levels\""),
                "not a vmsentry event: unknown variant `levels`",
            ),
            (LEVEL.replace("\"LOW\"", "\"low\""), "not a vmsentry event: unknown variant `low`"),
            (LEVEL.replace("\"pps\":4010", "\"pps\":\"4010\""), "not a vmsentry event: invalid type: string"),
            (LEVEL.replace("}", ""), "not a JSON event: EOF while parsing an object"),
        ] {
            let (_d, p) = file(format!("{LEVEL}\n{LEVEL}\n{line}\n{LEVEL}\n").as_bytes());
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("events.jsonl:3: {msg}")), "{e}");
        }
    }

    #[test]
    fn a_nullable_field_left_out_is_an_error_with_its_line() {
        // The writer always writes these, null or not: a line without one is not an event.
        for field in ["\"direction\":\"rx\",", "\"vm_name\":\"a\",", ",\"hypervisor\":null"] {
            let line = LEVEL.replace(field, "");
            let (_d, p) = file(format!("{LEVEL}\n{line}\n").as_bytes());
            let e = read(&p).unwrap_err().to_string();
            let name = field.trim_matches(',').split('"').nth(1).unwrap();
            assert!(e.ends_with(&format!("events.jsonl:2: not a vmsentry event: missing field `{name}`")), "{e}");
        }
    }

    #[test]
    fn a_time_out_of_the_drawn_range_is_an_error_with_its_line_not_a_panic() {
        for us in [i64::MIN, i64::MAX, (1 << 53) + 1, -(1 << 53) - 1] {
            let ts = crate::vocab::PacketTime::from_micros(us).to_string();
            let far = LEVEL.replace("2023-11-15T22:13:29.000000Z", &ts);
            let (_d, p) = file(format!("{LEVEL}\n{far}\n").as_bytes());
            let e = read(&p).unwrap_err().to_string();
            assert!(
                e.ends_with(&format!(
                    "events.jsonl:2: `ts` {ts} is outside the times a report draws (within 2^53 µs of 1970, years \
                     1685 to 2255)"
                )),
                "{e}"
            );
        }
        // The edge of the range reads, and its span is exact.
        let edge = LEVEL.replace("2023-11-15T22:13:29.000000Z", "@9007199254740992us");
        let early = LEVEL.replace("2023-11-15T22:13:29.000000Z", "@-9007199254740992us");
        let (_d, p) = file(format!("{early}\n{edge}\n").as_bytes());
        let d = read(&p).unwrap();
        assert_eq!((d.t0_us, d.us(d.t_end)), (-(1 << 53), 1 << 53));
        // And the page is drawn (no overflow in the axes or the clock).
        let out = tempfile::tempdir().unwrap();
        super::super::write(&p, out.path(), &Default::default(), None).unwrap();
    }

    #[test]
    fn a_summary_duration_that_is_not_a_span_is_an_error_with_its_line() {
        let summary =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/basic.jsonl"))
                .unwrap()
                .lines()
                .last()
                .unwrap()
                .to_string();
        assert!(summary.contains("\"duration_s\":"), "{summary}");
        let with = |dur: &str| {
            let start = summary.find("\"duration_s\":").unwrap() + "\"duration_s\":".len();
            let end = start + summary[start..].find(',').unwrap();
            format!("{}{dur}{}", &summary[..start], &summary[end..])
        };
        // It reads as it is.
        let (_d, p) = file(format!("{LEVEL}\n{summary}\n").as_bytes());
        assert!(read(&p).unwrap().summary.is_some());
        for (dur, says) in [
            ("-1e300", "`duration_s` -1e300 is not a span of packet time (from 0 to 18014398509 s)"),
            ("-1", "`duration_s` -1.0 is not a span of packet time"),
            ("1e300", "`duration_s` 1e300 is not a span of packet time"),
            ("1.2e10", "`duration_s` 12000000000.0 puts the start of the packets before the times a report draws"),
        ] {
            let (_d, p) = file(format!("{LEVEL}\n{}\n", with(dur)).as_bytes());
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("events.jsonl:2: {says}")), "{dur}: {e}");
        }
    }

    #[test]
    fn a_peak_window_without_a_max_is_kept_without_one() {
        let peaks = r#"{"type":"rtt_peaks","ts":"2023-11-15T22:13:30.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"a","window_start":"2023-11-15T22:13:29.000000Z","peaks":4,"samples":4,"min_ms":null,"mean_ms":null,"max_ms":null,"p50_ms":null,"p99_ms":null,"peak_ms":5.0,"baseline_ms":null,"hypervisor":null}"#;
        let (_d, p) = file(format!("{LEVEL}\n{peaks}\n").as_bytes());
        let d = read(&p).unwrap();
        assert_eq!(d.vms["fa:16:3e:00:00:01"].peaks, vec![(1.0, 4, None)]);
    }
}
