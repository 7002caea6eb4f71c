//! IDS alert inputs: Suricata EVE JSON, Snort 3 `alert_json` and Snort `alert_fast`, parsed, filtered and followed as files grow.
//!
//! `live` follows each `[[ids]]` file on a thread of its own ([`Follower`]),
//! woken by inotify, and hands each batch of alerts to the merge thread,
//! which maps the victim address to a hypervisor or VM and evacuates
//! (`policy::evacuate`). `replay` reads the files whole and fires each
//! alert when packet time reaches the alert's own timestamp, so a capture
//! and the IDS's log of it replay together, repeatably.

mod follow;

pub use follow::{Checkpoint, Follower, LineParser};

use crate::vocab::PacketTime;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// Which IDS wrote the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Suricata's EVE JSON (`event_type: alert` lines; others are skipped).
    SuricataEve,
    /// Snort 3's `alert_json` (with `src_addr`/`dst_addr` or `src_ap`/`dst_ap`).
    Snort3Json,
    /// Snort's `alert_fast` lines.
    SnortFast,
}

/// Which of an alert's addresses is the victim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VictimSide {
    /// The attacked host: the alert's destination (the usual case).
    #[default]
    Destination,
    /// For rules that fire on what a compromised host sends.
    Source,
}

/// One `[[ids]]` input of the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub path: PathBuf,
    pub format: Format,
    pub checkpoint: Option<PathBuf>,
    pub from_start: bool,
    pub min_severity: u8,
    pub include_sids: Vec<u64>,
    pub exclude_sids: Vec<u64>,
    pub cooldown_s: u64,
    pub victim: VictimSide,
}

impl Input {
    pub fn filter(&self) -> Filter {
        Filter::new(self.min_severity, self.include_sids.clone(), self.exclude_sids.clone(), self.cooldown_s)
    }
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::SuricataEve => "suricata_eve",
            Format::Snort3Json => "snort3_json",
            Format::SnortFast => "snort_fast",
        }
    }
}

/// One alert, as much as vmsentry needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub format: Format,
    /// The IDS's own timestamp, as written.
    pub timestamp: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sid: u64,
    /// 1 is the most severe (Suricata's severity, Snort's priority).
    pub severity: u8,
    pub msg: String,
    /// A digest of the line (16 hex digits): the same line read again after
    /// a crash gives the same actions, which the journal then sends once.
    pub key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("field `{0}` is missing or malformed")]
    Field(&'static str),
    #[error("not an alert_fast line")]
    Fast,
}

/// Parses one line; `Ok(None)` for a line that is not an alert (EVE's other
/// event types, blank lines).
pub fn parse(format: Format, line: &str) -> Result<Option<Alert>, ParseError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut alert = parse_fields(format, line)?;
    if let Some(a) = alert.as_mut() {
        use sha2::Digest;
        a.key = hex::encode(&sha2::Sha256::digest(line.as_bytes())[..8]);
    }
    Ok(alert)
}

fn parse_fields(format: Format, line: &str) -> Result<Option<Alert>, ParseError> {
    match format {
        Format::SuricataEve => {
            let v: Value = serde_json::from_str(line).map_err(|e| ParseError::Json(e.to_string()))?;
            if v["event_type"] != "alert" {
                return Ok(None);
            }
            Ok(Some(Alert {
                format,
                timestamp: v["timestamp"].as_str().unwrap_or_default().to_string(),
                src: ip(&v["src_ip"]).ok_or(ParseError::Field("src_ip"))?,
                dst: ip(&v["dest_ip"]).ok_or(ParseError::Field("dest_ip"))?,
                sid: v["alert"]["signature_id"].as_u64().ok_or(ParseError::Field("alert.signature_id"))?,
                severity: v["alert"]["severity"].as_u64().unwrap_or(3).min(255) as u8,
                msg: v["alert"]["signature"].as_str().unwrap_or_default().to_string(),
                key: String::new(),
            }))
        }
        Format::Snort3Json => {
            let v: Value = serde_json::from_str(line).map_err(|e| ParseError::Json(e.to_string()))?;
            let addr =
                |a: &str, ap: &str| ip(&v[a]).or_else(|| v[ap].as_str().and_then(|s| strip_port(s).parse().ok()));
            Ok(Some(Alert {
                format,
                timestamp: v["timestamp"].as_str().unwrap_or_default().to_string(),
                src: addr("src_addr", "src_ap").ok_or(ParseError::Field("src_addr"))?,
                dst: addr("dst_addr", "dst_ap").ok_or(ParseError::Field("dst_addr"))?,
                sid: v["sid"].as_u64().ok_or(ParseError::Field("sid"))?,
                severity: v["priority"].as_u64().unwrap_or(3).min(255) as u8,
                msg: v["msg"].as_str().unwrap_or_default().to_string(),
                key: String::new(),
            }))
        }
        Format::SnortFast => parse_fast(line).map(Some),
    }
}

fn ip(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

/// `10.0.0.1:80` → `10.0.0.1`; `[2001:db8::1]:80` and bare addresses too.
fn strip_port(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match s.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => a,
        _ => s,
    }
}

/// `MM/DD-HH:MM:SS.us  [**] [gid:sid:rev] MSG [**] [Classification: C] [Priority: N] {PROTO} SRC[:P] -> DST[:P]`
fn parse_fast(line: &str) -> Result<Alert, ParseError> {
    let timestamp = line.split_whitespace().next().ok_or(ParseError::Fast)?.to_string();
    let ids = line.split_once("] [").ok_or(ParseError::Fast)?.1;
    let ids = ids.split(']').next().ok_or(ParseError::Fast)?;
    let sid = ids.split(':').nth(1).and_then(|s| s.parse().ok()).ok_or(ParseError::Field("sid"))?;
    let after_ids = line.split_once(&format!("[{ids}]")).ok_or(ParseError::Fast)?.1;
    let msg = after_ids.split("[**]").next().unwrap_or("").trim().to_string();
    let severity = line
        .split_once("[Priority: ")
        .and_then(|(_, r)| r.split(']').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(3);
    let flow = line.rsplit_once('}').ok_or(ParseError::Fast)?.1;
    let (src, dst) = flow.split_once("->").ok_or(ParseError::Fast)?;
    let src = strip_port(src.trim()).parse().map_err(|_| ParseError::Field("source address"))?;
    let dst = strip_port(dst.trim()).parse().map_err(|_| ParseError::Field("destination address"))?;
    Ok(Alert { format: Format::SnortFast, timestamp, src, dst, sid, severity, msg, key: String::new() })
}

/// Hosts a filter remembers for its cooldown at most.
const MAX_COOLDOWN_HOSTS: usize = 65_536;

/// Which alerts count: at least this severe, by signature id, and at most
/// one per host per cooldown.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Pass alerts at least this severe: 1 is the most severe, so 2 passes
    /// severities 1 and 2. 0: all.
    pub min_severity: u8,
    /// When not empty, only these signature ids.
    pub include: Vec<u64>,
    pub exclude: Vec<u64>,
    /// Seconds during which further alerts about the same host are dropped.
    pub cooldown_s: u64,
    last: HashMap<IpAddr, u64>,
}

impl Alert {
    pub fn victim(&self, side: VictimSide) -> IpAddr {
        match side {
            VictimSide::Destination => self.dst,
            VictimSide::Source => self.src,
        }
    }

    /// The alert's own time: EVE's RFC 3339 timestamp, or Snort's
    /// `MM/DD[/YY]-HH:MM:SS.us` (read as UTC, as `snort -U` writes it; without
    /// a year, `year`'s).
    pub fn time(&self, year: i32) -> Option<PacketTime> {
        let t = self.timestamp.trim();
        match self.format {
            Format::SuricataEve => {
                // Suricata writes the offset without a colon (+0000).
                let fmt = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
                );
                let fixed = if t.len() > 3 && t.as_bytes()[t.len() - 3] == b':' {
                    format!("{}{}", &t[..t.len() - 3], &t[t.len() - 2..])
                } else {
                    t.to_string()
                };
                let dt = time::OffsetDateTime::parse(&fixed, &fmt).ok()?;
                Some(PacketTime::from_micros((dt.unix_timestamp_nanos() / 1000) as i64))
            }
            Format::Snort3Json | Format::SnortFast => {
                let (date, clock) = t.split_once('-')?;
                let mut d = date.split('/');
                let month: u8 = d.next()?.parse().ok()?;
                let day: u8 = d.next()?.parse().ok()?;
                let year = match d.next() {
                    Some(y) => 2000 + y.parse::<i32>().ok()?,
                    None => year,
                };
                let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
                let mut c = hms.split(':').map(|x| x.parse::<u8>().ok());
                let (h, m, s) = (c.next()??, c.next()??, c.next()??);
                let us: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
                let date = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
                let dt = date.with_hms(h, m, s).ok()?.assume_utc();
                Some(PacketTime::from_micros(dt.unix_timestamp() * 1_000_000 + us))
            }
        }
    }
}

impl Filter {
    pub fn new(min_severity: u8, include: Vec<u64>, exclude: Vec<u64>, cooldown_s: u64) -> Filter {
        Filter { min_severity, include, exclude, cooldown_s, last: HashMap::new() }
    }

    /// Whether the alert about `host`, seen at `now_s` (seconds), passes.
    pub fn pass(&mut self, a: &Alert, host: IpAddr, now_s: u64) -> bool {
        if self.min_severity > 0 && a.severity > self.min_severity {
            return false;
        }
        if (!self.include.is_empty() && !self.include.contains(&a.sid)) || self.exclude.contains(&a.sid) {
            return false;
        }
        if self.cooldown_s > 0 {
            if let Some(&t) = self.last.get(&host) {
                if now_s < t + self.cooldown_s {
                    return false;
                }
            }
            if self.last.len() >= MAX_COOLDOWN_HOSTS {
                // Bounded: forget hosts whose cooldown is over; if all are
                // still cooling down, this one passes without a cooldown.
                let c = self.cooldown_s;
                self.last.retain(|_, t| now_s < *t + c);
            }
            if self.last.len() < MAX_COOLDOWN_HOSTS {
                self.last.insert(host, now_s);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suricata_eve_alerts_are_parsed_and_other_events_skipped() {
        let line = r#"{"timestamp":"2026-11-22T03:45:01.123456+0000","flow_id":1,"event_type":"alert","src_ip":"203.0.113.9","src_port":4444,"dest_ip":"10.0.0.31","dest_port":22,"proto":"TCP","alert":{"action":"allowed","gid":1,"signature_id":2001219,"rev":20,"signature":"ET SCAN Potential SSH Scan","category":"Attempted Information Leak","severity":2}}"#;
        let a = parse(Format::SuricataEve, line).unwrap().unwrap();
        assert_eq!(
            (a.src, a.dst, a.sid, a.severity, a.msg.as_str()),
            ("203.0.113.9".parse().unwrap(), "10.0.0.31".parse().unwrap(), 2001219, 2, "ET SCAN Potential SSH Scan")
        );
        assert_eq!(parse(Format::SuricataEve, r#"{"event_type":"flow","src_ip":"1.2.3.4"}"#), Ok(None));
        // The key is the line's digest: equal lines, equal keys.
        assert_eq!(a.key.len(), 16);
        assert_eq!(parse(Format::SuricataEve, &format!("  {line}\n")).unwrap().unwrap().key, a.key);
        assert_ne!(parse(Format::SuricataEve, &line.replace("4444", "4445")).unwrap().unwrap().key, a.key);
        assert!(matches!(parse(Format::SuricataEve, "{not json"), Err(ParseError::Json(_))));
        assert_eq!(
            parse(Format::SuricataEve, r#"{"event_type":"alert","src_ip":"x"}"#),
            Err(ParseError::Field("src_ip"))
        );
    }

    #[test]
    fn snort3_json_with_addresses_or_address_ports() {
        let a = parse(Format::Snort3Json, r#"{"timestamp":"11/22-03:45:01.123456","sid":1000001,"priority":1,"msg":"ICMP flood","src_addr":"203.0.113.9","dst_addr":"10.0.1.1"}"#).unwrap().unwrap();
        assert_eq!((a.dst, a.sid, a.severity), ("10.0.1.1".parse().unwrap(), 1000001, 1));
        let a = parse(Format::Snort3Json, r#"{"sid":7,"src_ap":"[2001:db8::9]:443","dst_ap":"10.0.1.1:80"}"#)
            .unwrap()
            .unwrap();
        assert_eq!((a.src, a.dst, a.severity), ("2001:db8::9".parse().unwrap(), "10.0.1.1".parse().unwrap(), 3));
    }

    #[test]
    fn snort_alert_fast_lines() {
        let line = "11/22-03:45:01.123456  [**] [1:1000001:1] ICMP flood to a VM [**] [Classification: Attempted Denial of Service] [Priority: 2] {ICMP} 203.0.113.9 -> 10.0.1.1";
        let a = parse(Format::SnortFast, line).unwrap().unwrap();
        assert_eq!(
            (a.timestamp.as_str(), a.sid, a.severity, a.msg.as_str(), a.src, a.dst),
            (
                "11/22-03:45:01.123456",
                1000001,
                2,
                "ICMP flood to a VM",
                "203.0.113.9".parse().unwrap(),
                "10.0.1.1".parse().unwrap()
            )
        );
        let a = parse(
            Format::SnortFast,
            "01/01-00:00:00.000001  [**] [1:42:3] x [**] [Priority: 1] {TCP} 10.0.0.1:1234 -> 10.0.0.2:80",
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.sid, a.dst), (42, "10.0.0.2".parse().unwrap()));
        assert_eq!(parse(Format::SnortFast, "garbage"), Err(ParseError::Fast));
    }

    #[test]
    fn filters_by_severity_sid_and_per_host_cooldown() {
        let a = |sid, sev| Alert {
            format: Format::SnortFast,
            timestamp: String::new(),
            src: [1, 1, 1, 1].into(),
            dst: [10, 0, 0, 1].into(),
            sid,
            severity: sev,
            msg: String::new(),
            key: String::new(),
        };
        let h: IpAddr = [10, 0, 0, 1].into();
        let mut f = Filter::new(2, vec![], vec![9], 60);
        assert!(!f.pass(&a(1, 3), h, 0), "severity 3 is less severe than 2");
        assert!(!f.pass(&a(9, 1), h, 0), "excluded sid");
        assert!(f.pass(&a(1, 1), h, 0));
        assert!(!f.pass(&a(1, 1), h, 59), "cooldown");
        assert!(f.pass(&a(1, 1), [10, 0, 0, 2].into(), 59), "per host");
        assert!(f.pass(&a(1, 2), h, 60));
        let mut only = Filter::new(0, vec![5], vec![], 0);
        assert!(only.pass(&a(5, 3), h, 0) && !only.pass(&a(6, 1), h, 0));
    }

    #[test]
    fn alert_times_in_each_format() {
        let at = |format, ts: &str| {
            let a = Alert {
                format,
                timestamp: ts.into(),
                src: [1, 1, 1, 1].into(),
                dst: [1, 1, 1, 1].into(),
                sid: 1,
                severity: 1,
                msg: String::new(),
                key: String::new(),
            };
            a.time(2026).map(|t| t.rfc3339())
        };
        let want = Some("2026-11-22T03:45:01.123456Z".to_string());
        assert_eq!(at(Format::SuricataEve, "2026-11-22T03:45:01.123456+0000"), want);
        assert_eq!(at(Format::SuricataEve, "2026-11-22T04:45:01.123456+01:00"), want);
        assert_eq!(at(Format::SnortFast, "11/22-03:45:01.123456"), want);
        assert_eq!(at(Format::Snort3Json, "11/22/26-03:45:01.123456"), want);
        assert_eq!(at(Format::SnortFast, "11/22-03:45:01.5").unwrap(), "2026-11-22T03:45:01.500000Z");
        assert_eq!(at(Format::SnortFast, "13/40-03:45:01.1"), None);
        assert_eq!(at(Format::SuricataEve, "yesterday"), None);
    }
}
