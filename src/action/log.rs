//! The `log` backend: writes each action as one human-readable line (stderr by default).

use super::{Action, ActionSink, SinkError};
use std::io::Write;

/// Writes `vmsentry: action ID: KIND VM (NAME) on HYPERVISOR -> DEST: LEVEL REASON`.
pub struct LogSink {
    out: Box<dyn Write + Send>,
}

impl LogSink {
    pub fn stderr() -> Self {
        LogSink { out: Box::new(std::io::stderr()) }
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        LogSink { out }
    }
}

impl ActionSink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        let mut line = format!("vmsentry: action {}: {} {}", a.id, a.kind.as_str(), a.vm);
        if let Some(n) = &a.vm_name {
            line.push_str(&format!(" ({n})"));
        }
        line.push_str(&format!(" on {}", a.hypervisor.as_deref().unwrap_or("unknown hypervisor")));
        if let Some(d) = &a.destination {
            line.push_str(&format!(" -> {d}"));
        }
        line.push_str(&format!(": {} {}", a.level, a.reason.as_str()));
        if let Some(n) = &a.note {
            line.push_str(&format!(" ({n})"));
        }
        writeln!(self.out, "{line}").map_err(|e| SinkError::Temporary { backend: "log", msg: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionKind;
    use crate::detect::{Level, Reason};
    use crate::vocab::PacketTime;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_line_per_action() {
        let buf = Shared::default();
        let mut s = LogSink::to_writer(Box::new(buf.clone()));
        let a = Action {
            id: "1000000-1".into(),
            ts: PacketTime::from_micros(1_000_000),
            kind: ActionKind::Migrate,
            vm: "fa:16:3e:00:00:01".parse().unwrap(),
            vm_name: Some("web-1".into()),
            hypervisor: Some("compute-1".into()),
            signed: true,
            destination: Some("compute-2".into()),
            level: Level::High,
            reason: Reason::Rate,
            note: None,
        };
        s.deliver(&a).unwrap();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            "vmsentry: action 1000000-1: migrate fa:16:3e:00:00:01 (web-1) on compute-1 -> compute-2: HIGH rate\n"
        );
    }
}
