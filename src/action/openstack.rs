//! The `openstack` backend: Keystone v3, the server found by its port's MAC (Neutron), pause (and lock) to quarantine, `os-migrateLive` to migrate.
//!
//! Authentication is a Keystone v3 token, by password (scoped to a project)
//! or by application credential; the token and the service catalog (the
//! `compute` and `network` endpoints of the configured interface and region)
//! are kept until a minute before the token expires, and renewed at once if
//! a service answers 401. The VM's server is the `device_id` of the Neutron
//! port with the action's MAC. Quarantine pauses it (after locking it, if
//! `lock`); migrate calls `os-migrateLive` with `host` = the destination and
//! compute microversion 2.30. Nova has no idempotency key: a second delivery
//! of the same pause answers 409, which counts as done. Not run against a
//! live cloud: tested against a local server that answers as Keystone,
//! Neutron and Nova do.

use super::{Action, ActionKind, ActionSink, SinkError};
use crate::decode::Mac;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenstackAuth {
    Password { username: String, password: String, user_domain: String, project: String, project_domain: String },
    ApplicationCredential { id: String, secret: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenstackConfig {
    /// Keystone's v3 URL, e.g. `https://keystone.example:5000/v3`.
    pub auth_url: String,
    pub auth: OpenstackAuth,
    pub region: Option<String>,
    /// The catalog interface: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// Lock the server before pausing it.
    pub lock: bool,
    pub timeout: Duration,
}

impl OpenstackConfig {
    /// `backend.openstack.user_domain` and `project_domain`.
    pub const DEFAULT_DOMAIN: &'static str = "Default";
    /// `backend.openstack.interface`.
    pub const DEFAULT_INTERFACE: &'static str = "public";
    /// `backend.openstack.timeout_ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
}

const NAME: &str = "openstack";
/// `os-migrateLive` with `host` needs compute microversion 2.30 or later.
const MICROVERSION: &str = "2.30";

struct Session {
    token: String,
    expires: SystemTime,
    compute: String,
    network: String,
}

pub struct OpenstackSink {
    cfg: OpenstackConfig,
    agent: ureq::Agent,
    session: Option<Session>,
}

fn temporary(msg: String) -> SinkError {
    SinkError::Temporary { backend: NAME, msg }
}
fn permanent(msg: String) -> SinkError {
    SinkError::Permanent { backend: NAME, msg }
}

impl OpenstackSink {
    pub fn new(cfg: OpenstackConfig) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(cfg.timeout)).http_status_as_error(false).build().into();
        OpenstackSink { cfg, agent, session: None }
    }

    fn auth_body(&self) -> Value {
        match &self.cfg.auth {
            OpenstackAuth::Password { username, password, user_domain, project, project_domain } => json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": username, "domain": {"name": user_domain}, "password": password}}},
                "scope": {"project": {"name": project, "domain": {"name": project_domain}}}
            }}),
            OpenstackAuth::ApplicationCredential { id, secret } => json!({"auth": {
                "identity": {"methods": ["application_credential"],
                             "application_credential": {"id": id, "secret": secret}}
            }}),
        }
    }

    /// A valid token and the endpoints, authenticating when needed.
    fn session(&mut self) -> Result<&Session, SinkError> {
        let fresh = self.session.as_ref().is_some_and(|s| s.expires > SystemTime::now() + Duration::from_secs(60));
        if !fresh {
            self.session = Some(self.authenticate()?);
        }
        self.session.as_ref().ok_or_else(|| temporary("no session".into()))
    }

    fn authenticate(&self) -> Result<Session, SinkError> {
        let url = format!("{}/auth/tokens", self.cfg.auth_url.trim_end_matches('/'));
        let body = serde_json::to_vec(&self.auth_body()).unwrap_or_default();
        let mut r = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| temporary(format!("{url}: {e}")))?;
        let code = r.status().as_u16();
        if code == 401 || code == 403 {
            return Err(permanent(format!("Keystone refused the credentials ({code})")));
        }
        if !(200..300).contains(&code) {
            return Err(temporary(format!("{url} answered {code}")));
        }
        let token = r
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| temporary("Keystone gave no X-Subject-Token".into()))?;
        let v: Value = r.body_mut().read_json().map_err(|e| temporary(format!("Keystone's answer: {e}")))?;
        let expires = v["token"]["expires_at"]
            .as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
            .map_or(SystemTime::now() + Duration::from_secs(300), SystemTime::from);
        let endpoint = |kind: &str| -> Result<String, SinkError> {
            v["token"]["catalog"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["type"] == kind)
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .find(|e| {
                    e["interface"] == self.cfg.interface.as_str()
                        && self.cfg.region.as_deref().is_none_or(|r| e["region"] == r || e["region_id"] == r)
                })
                .and_then(|e| e["url"].as_str().map(|u| u.trim_end_matches('/').to_string()))
                .ok_or_else(|| {
                    permanent(format!("no {kind} endpoint ({} interface) in the catalog", self.cfg.interface))
                })
        };
        Ok(Session { token, expires, compute: endpoint("compute")?, network: endpoint("network")? })
    }

    /// A request with the token; 401 drops the session so the retry re-authenticates.
    fn call(&mut self, method: &str, url: &str, body: Option<Value>) -> Result<(u16, Value), SinkError> {
        let token = self.session()?.token.clone();
        let req = match method {
            "GET" => self.agent.get(url).header("X-Auth-Token", &token).call(),
            _ => {
                let b = serde_json::to_vec(&body.unwrap_or(Value::Null)).unwrap_or_default();
                self.agent
                    .post(url)
                    .header("X-Auth-Token", &token)
                    .header("Content-Type", "application/json")
                    .header("OpenStack-API-Version", format!("compute {MICROVERSION}"))
                    .header("X-OpenStack-Nova-API-Version", MICROVERSION)
                    .send(&b[..])
            }
        };
        let mut r = req.map_err(|e| temporary(format!("{url}: {e}")))?;
        let code = r.status().as_u16();
        if code == 401 {
            self.session = None;
            return Err(temporary(format!("{url} answered 401: the token will be renewed")));
        }
        let v = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok((code, v))
    }

    fn server_of(&mut self, mac: Mac) -> Result<String, SinkError> {
        let network = self.session()?.network.clone();
        let url = format!("{network}/v2.0/ports?mac_address={mac}");
        let (code, v) = self.call("GET", &url, None)?;
        if code >= 500 {
            return Err(temporary(format!("{url} answered {code}")));
        }
        if !(200..300).contains(&code) {
            return Err(permanent(format!("{url} answered {code}")));
        }
        v["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|p| p["device_id"].as_str().filter(|d| !d.is_empty()).map(str::to_string))
            .ok_or_else(|| permanent(format!("no Neutron port with MAC {mac} belongs to a server")))
    }

    fn server_action(&mut self, server: &str, body: Value, conflict_is_done: bool) -> Result<(), SinkError> {
        let compute = self.session()?.compute.clone();
        let url = format!("{compute}/servers/{server}/action");
        let (code, v) = self.call("POST", &url, Some(body))?;
        match code {
            200..=299 => Ok(()),
            409 if conflict_is_done => Ok(()),
            408 | 429 | 500..=599 => Err(temporary(format!("{url} answered {code}: {v}"))),
            _ => Err(permanent(format!("{url} answered {code}: {v}"))),
        }
    }
}

impl ActionSink for OpenstackSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        match a.kind {
            ActionKind::Alert => Ok(()),
            ActionKind::Quarantine => {
                let server = self.server_of(a.vm)?;
                if self.cfg.lock {
                    self.server_action(&server, json!({"lock": null}), true)?;
                }
                // Already paused (a second delivery) answers 409: done.
                self.server_action(&server, json!({"pause": null}), true)
            }
            ActionKind::Migrate => {
                let server = self.server_of(a.vm)?;
                let host = a.destination.clone().ok_or_else(|| permanent("migrate without a destination".into()))?;
                self.server_action(&server, json!({"os-migrateLive": {"host": host, "block_migration": "auto"}}), false)
            }
        }
    }
}
