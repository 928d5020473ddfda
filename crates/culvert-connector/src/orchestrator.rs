//! The live ingress configuration, shared by all connections of the
//! process (cloudflared's "orchestrator").
//!
//! Requests take an `Arc` snapshot when they start and keep it to the end,
//! so a configuration push swaps the pointer without disturbing in-flight
//! requests. Versions follow cloudflared (`orchestration.UpdateConfig`):
//! start at -1, apply a push only when its version is newer, otherwise
//! answer with the current version; a push that fails to parse or validate
//! keeps the old configuration and returns the error text.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use culvert_ingress::{Ingress, Rule};
use culvert_proto::registration::UpdateConfigurationResponse;
use tokio::sync::watch;

use crate::access::AccessValidator;
use crate::error::ConnectorError;
use crate::origin::{Origin, PreparedRule, prepare_rules};

/// The version before any push.
pub const INITIAL_VERSION: i32 = -1;

/// One applied configuration.
#[derive(Debug)]
pub struct ConfigSnapshot {
    /// Pushed version, [`INITIAL_VERSION`] for the local configuration.
    pub version: i32,
    pub ingress: Ingress,
    /// `rules[i]` serves `ingress.rules[i]`.
    rules: Arc<[PreparedRule]>,
}

/// Where a request goes: the matched rule, its origin and its Access check.
#[derive(Debug)]
pub struct Route<'a> {
    /// Index of the rule in `ingress.rules`.
    pub index: usize,
    pub rule: &'a Rule,
    pub origin: Origin,
    /// `access.required`: checked before the request is dispatched
    /// ([`crate::proxy::access_refusal`]).
    pub access: Option<&'a AccessValidator>,
}

impl ConfigSnapshot {
    pub fn new(version: i32, ingress: Ingress) -> Result<ConfigSnapshot, ConnectorError> {
        let rules = prepare_rules(&ingress)?;
        Ok(ConfigSnapshot {
            version,
            ingress,
            rules,
        })
    }

    /// The rule for `host` (port ignored) and `path`, its origin and its
    /// Access check.
    pub fn route(&self, host: &str, path: &str) -> Route<'_> {
        let (index, rule) = self.ingress.find_match(host, path);
        let prepared = self.rules.get(index);
        Route {
            index,
            rule,
            origin: prepared.map_or(Origin::Status(503), |p| p.origin.clone()),
            access: prepared.and_then(|p| p.access.as_deref()),
        }
    }
}

/// Whether a push of `pushed` should replace `current` (strictly newer).
pub fn should_apply(current: i32, pushed: i32) -> bool {
    pushed > current
}

/// The shared configuration holder.
#[derive(Debug)]
pub struct Orchestrator {
    current: ArcSwap<ConfigSnapshot>,
    /// Serialises pushes (they arrive on any connection); readers never lock.
    update: Mutex<()>,
    /// The local configuration JSON that connection 0 uploads with
    /// `updateLocalConfiguration` when the tunnel is locally managed.
    local_json: watch::Sender<Option<Arc<str>>>,
}

impl Orchestrator {
    /// Starts with the local configuration at version -1.
    pub fn new(initial: Ingress) -> Result<Orchestrator, ConnectorError> {
        Ok(Orchestrator {
            current: ArcSwap::from_pointee(ConfigSnapshot::new(INITIAL_VERSION, initial)?),
            update: Mutex::new(()),
            local_json: watch::Sender::new(None),
        })
    }

    /// Sets the local configuration JSON to upload (see [`Self::local_json`]).
    pub fn set_local_json(&self, json: String) {
        self.local_json.send_replace(Some(json.into()));
    }

    /// The local configuration JSON, updated on every reload.
    pub fn local_json(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.local_json.subscribe()
    }

    /// Applies a reloaded local configuration: swaps the ingress (in-flight
    /// requests keep their snapshot) unless the edge has pushed a remote
    /// configuration, which takes precedence as in cloudflared. Returns
    /// whether the ingress was applied; the JSON to upload is updated
    /// either way.
    pub fn apply_local(&self, ingress: Ingress, json: String) -> Result<bool, ConnectorError> {
        let _guard = self.update.lock().unwrap_or_else(|p| p.into_inner());
        if self.version() != INITIAL_VERSION {
            return Ok(false);
        }
        let snapshot = ConfigSnapshot::new(INITIAL_VERSION, ingress)?;
        self.current.store(Arc::new(snapshot));
        self.set_local_json(json);
        Ok(true)
    }

    /// The configuration new requests use.
    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.current.load_full()
    }

    pub fn version(&self) -> i32 {
        self.current.load().version
    }

    /// `ConfigurationManager.updateConfiguration(version, config)`.
    pub fn update_configuration(&self, version: i32, config: &[u8]) -> UpdateConfigurationResponse {
        let _guard = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.version();
        if !should_apply(current, version) {
            tracing::debug!(
                current,
                pushed = version,
                "ignoring configuration that is not newer"
            );
            return UpdateConfigurationResponse {
                latest_applied_version: current,
                err: String::new(),
            };
        }
        let refuse = |err: String| {
            tracing::error!(version, error = %err, "refusing remote configuration");
            UpdateConfigurationResponse {
                latest_applied_version: current,
                err,
            }
        };
        let json: serde_json::Value = match serde_json::from_slice(config) {
            Ok(v) => v,
            Err(e) => return refuse(format!("failed to unmarshal remote configuration: {e}")),
        };
        let ingress = match culvert_ingress::parse_remote_config(&json) {
            Ok(i) => i,
            Err(e) => return refuse(e.to_string()),
        };
        let snapshot = match ConfigSnapshot::new(version, ingress) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()),
        };
        tracing::info!(
            version,
            config = %String::from_utf8_lossy(config),
            "Updated to new configuration"
        );
        self.current.store(Arc::new(snapshot));
        UpdateConfigurationResponse {
            latest_applied_version: version,
            err: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{"ingress":[{"hostname":"app.test","service":"http://127.0.0.1:18080"},{"service":"http_status:404"}]}"#;

    #[test]
    fn versions_apply_like_cloudflared() {
        assert!(should_apply(-1, 0));
        assert!(!should_apply(3, 3));
        assert!(!should_apply(3, 2));

        let o = Orchestrator::new(Ingress::default_no_rules()).unwrap();
        assert_eq!(o.version(), -1);
        let before = o.snapshot();
        assert!(matches!(
            before.route("app.test", "/").origin,
            Origin::Status(503)
        ));

        let r = o.update_configuration(1, CFG.as_bytes());
        assert_eq!((r.latest_applied_version, r.err.as_str()), (1, ""));
        assert!(matches!(
            o.snapshot().route("app.test", "/").origin,
            Origin::Http(_)
        ));
        assert!(matches!(
            o.snapshot().route("x.test", "/").origin,
            Origin::Status(404)
        ));
        // An in-flight request keeps its snapshot.
        assert!(matches!(
            before.route("app.test", "/").origin,
            Origin::Status(503)
        ));

        // Stale and equal versions are ignored.
        let stale = br#"{"ingress":[{"service":"http_status:500"}]}"#;
        let r = o.update_configuration(1, stale);
        assert_eq!((r.latest_applied_version, r.err.as_str()), (1, ""));
        let r = o.update_configuration(0, stale);
        assert_eq!(r.latest_applied_version, 1);
        assert!(matches!(
            o.snapshot().route("x.test", "/").origin,
            Origin::Status(404)
        ));
    }

    #[test]
    fn local_reloads_until_a_remote_push() {
        let o = Orchestrator::new(Ingress::default_no_rules()).unwrap();
        let rx = o.local_json();
        let local: serde_json::Value = serde_json::from_str(CFG).unwrap();
        let ingress = culvert_ingress::parse_local_config(&local).unwrap();
        assert!(o.apply_local(ingress.clone(), "v1".into()).unwrap());
        assert_eq!(rx.borrow().as_deref(), Some("v1"));
        assert!(matches!(
            o.snapshot().route("app.test", "/").origin,
            Origin::Http(_)
        ));
        assert_eq!(o.version(), INITIAL_VERSION);
        let r = o.update_configuration(0, br#"{"ingress":[{"service":"http_status:418"}]}"#);
        assert_eq!(r.latest_applied_version, 0);
        assert!(!o.apply_local(ingress, "v2".into()).unwrap());
        assert!(matches!(
            o.snapshot().route("app.test", "/").origin,
            Origin::Status(418)
        ));
    }

    #[test]
    fn routes_carry_the_rule_access_check() {
        let o = Orchestrator::new(Ingress::default_no_rules()).unwrap();
        let cfg = br#"{"ingress":[{"hostname":"app.test","service":"http_status:200","originRequest":{"access":{"required":true,"teamName":"t"}}},{"service":"http_status:404"}]}"#;
        assert_eq!(o.update_configuration(1, cfg).err, "");
        let snapshot = o.snapshot();
        let guarded = snapshot.route("app.test", "/");
        assert_eq!(guarded.index, 0);
        assert!(guarded.access.is_some());
        assert!(snapshot.route("x.test", "/").access.is_none());
    }

    #[test]
    fn invalid_pushes_keep_the_old_config() {
        let o = Orchestrator::new(Ingress::default_no_rules()).unwrap();
        let r = o.update_configuration(
            2,
            br#"{"ingress":[{"hostname":"a.test","service":"http://x"}]}"#,
        );
        assert_eq!(r.latest_applied_version, -1);
        assert_eq!(
            r.err,
            "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
        );
        let r = o.update_configuration(2, b"{not json");
        assert_eq!(r.latest_applied_version, -1);
        assert!(r.err.contains("unmarshal"), "{}", r.err);
        assert_eq!(o.version(), -1);
    }
}
