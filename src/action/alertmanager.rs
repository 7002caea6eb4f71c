//! The `alertmanager` backend: each action as an alert on Alertmanager's v2 API, resolved (`endsAt`) when the VM falls back to LOW.
//!
//! POST `URL/api/v2/alerts` with one alert: labels `alertname`
//! (`VmsentryAction`), `vm`, `vm_name`, `hypervisor`, `level`, `reason`,
//! `action`; annotations `summary` and `action_id`; `startsAt` the action's
//! packet time. When the VM falls back to LOW the same alert is posted again
//! with `endsAt`. 2xx is success; 5xx and connection errors are retried.

use super::{Action, ActionSink, SinkError};
use crate::decode::Mac;
use crate::vocab::PacketTime;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerConfig {
    /// Alertmanager's base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    pub timeout: Duration,
}

impl AlertmanagerConfig {
    /// `backend.alertmanager.timeout_ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
}

pub struct AlertmanagerSink {
    cfg: AlertmanagerConfig,
    agent: ureq::Agent,
    /// The alert last posted per VM, to resolve it.
    firing: HashMap<Mac, Value>,
}

const NAME: &str = "alertmanager";

impl AlertmanagerSink {
    pub fn new(cfg: AlertmanagerConfig) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(cfg.timeout)).http_status_as_error(false).build().into();
        AlertmanagerSink { cfg, agent, firing: HashMap::new() }
    }

    fn post(&self, alert: &Value) -> Result<(), SinkError> {
        let url = format!("{}/api/v2/alerts", self.cfg.url.trim_end_matches('/'));
        let body = serde_json::to_vec(&json!([alert])).unwrap_or_default();
        match self.agent.post(&url).header("Content-Type", "application/json").send(&body[..]) {
            Ok(r) => match r.status().as_u16() {
                200..=299 => Ok(()),
                c @ (408 | 429 | 500..=599) => {
                    Err(SinkError::Temporary { backend: NAME, msg: format!("{url} answered {c}") })
                }
                c => Err(SinkError::Permanent { backend: NAME, msg: format!("{url} answered {c}") }),
            },
            Err(e) => Err(SinkError::Temporary { backend: NAME, msg: format!("{url}: {e}") }),
        }
    }
}

impl ActionSink for AlertmanagerSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        let alert = json!({
            "labels": {
                "alertname": "VmsentryAction",
                "vm": a.vm.to_string(),
                "vm_name": a.vm_name.clone().unwrap_or_default(),
                "hypervisor": a.hypervisor.clone().unwrap_or_default(),
                "level": a.level.as_str(),
                "reason": a.reason.as_str(),
                "action": a.kind.as_str(),
            },
            "annotations": {
                "summary": format!("{} {} ({} {})", a.kind.as_str(), a.vm_name.as_deref().unwrap_or(&a.vm.to_string()), a.level, a.reason.as_str()),
                "action_id": a.id,
            },
            "startsAt": a.ts.rfc3339(),
        });
        self.post(&alert)?;
        self.firing.insert(a.vm, alert);
        Ok(())
    }

    fn resolve(&mut self, vm: Mac, at: PacketTime) -> Result<(), SinkError> {
        let Some(mut alert) = self.firing.remove(&vm) else { return Ok(()) };
        alert["endsAt"] = json!(at.rfc3339());
        self.post(&alert)
    }
}
