//! Reload at the merge: on SIGHUP, valid new rules take effect between windows, keeping every measurement; invalid ones are refused.

use super::evacuation::Mtd;
use super::stages::Stages;
use crate::config::{RestartOnly, Rules};
use crate::measure::placement::{PlacementConfig, SharedPlacement};
use crate::serve::Telemetry;
use crate::trust::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The reload flag (SIGHUP), the rules directory, the shards' shared
/// config, and the settings running now that only a restart changes.
pub(super) struct Reload {
    pub flag: Arc<AtomicBool>,
    pub dir: PathBuf,
    pub shared: Arc<SharedPlacement>,
    pub running: RestartOnly,
}

impl Reload {
    /// Re-reads the rules when SIGHUP asked: valid rules take effect now,
    /// keeping every measurement; invalid ones are refused with the same
    /// message as `vmsentry check` and the old rules stay.
    pub(super) fn poll(&mut self, st: &mut Stages, mtd: &mut Mtd, telemetry: Option<&Telemetry>) {
        if !self.flag.swap(false, Ordering::AcqRel) {
            return;
        }
        let dir = &self.dir;
        let result = match Rules::load(dir) {
            Ok(mut rules) => {
                eprintln!("vmsentry: rules reloaded from {}", dir.display());
                let later = self.running.restart_only_changes(&rules);
                if !later.is_empty() {
                    eprintln!(
                        "vmsentry: changed, but only a restart applies them (the running ones stay): {}",
                        later.join(", ")
                    );
                }
                self.running.keep_running(&mut rules);
                self.shared.replace(PlacementConfig::from(&rules));
                apply(st, mtd, &rules);
                "ok"
            }
            Err(e) => {
                eprintln!("vmsentry: rules not reloaded, the old rules stay: {e}");
                "error"
            }
        };
        if let Some(t) = telemetry {
            t.metrics.reloads.with_label_values(&[result]).inc();
        }
    }
}

/// Takes valid new rules. Everything keyed by hypervisor follows it by id:
/// the detector's places, the policy's migrations in flight, the
/// evacuation state; the storm limits' memory carries over.
pub(super) fn apply(st: &mut Stages, mtd: &mut Mtd, rules: &Rules) {
    let old_ids: Vec<String> = st.detector.registry().entries().iter().map(|e| e.id.clone()).collect();
    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    st.detector.reload(rules.detect_config(), registry.clone());
    let d = &st.detector;
    let placed = (0..d.vms().len()).map(|i| (d.place(i).and_then(|p| p.hv), d.vm(i).ram_mb.unwrap_or(0)));
    st.policy.reload(rules, registry, placed);
    mtd.reload(rules, &old_ids);
}
