//! Tenants: which tenant each agent belongs to, and whose data a caller sees.
//!
//! An agent belongs to one tenant for good: the tenant is fixed when the agent is enrolled or
//! first connects ([`super::agents::Agents`] refuses a certificate that names another), and a
//! batch is appended only under the `agent_id` of the connection's certificate. So the log's
//! `agent_id`, stamped by the broker's check, determines each event's `tenant_id`: readers map
//! it through [`TenantMap`] (an agent the broker never admitted, such as one of a log written
//! before certificates, is of [`runnel_protocol::DEFAULT_TENANT`]). The map is held in memory
//! and replaced whole on each change, so a reader takes a snapshot and filters a scan with it
//! without a lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use runnel_protocol::DEFAULT_TENANT;

/// Whose data a caller sees: every tenant's (an operator's token, without a tenant) or one
/// tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every tenant's data, and what belongs to none (global plugins).
    All,
    /// This tenant's data only.
    Tenant(String),
}

impl Scope {
    /// One tenant's scope, or every tenant's for `None` (what an operator deployed).
    pub fn of(tenant: Option<String>) -> Scope {
        match tenant {
            Some(t) => Scope::Tenant(t),
            None => Scope::All,
        }
    }

    /// The tenant, when the scope is one tenant's.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        }
    }

    /// Whether the caller sees an event of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }

    /// Whether the caller sees something `owner` deployed (`None`: global, deployed by an
    /// operator; only an operator's scope sees it, since it may hold every tenant's data).
    pub fn owns(&self, owner: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => owner == Some(t.as_str()),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("every tenant"),
            Scope::Tenant(t) => write!(f, "tenant {t:?}"),
        }
    }
}

/// A snapshot of every known agent's tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantMap(Arc<HashMap<String, String>>);

impl TenantMap {
    /// The tenant of the events `agent_id` appended.
    pub fn tenant_of(&self, agent_id: &str) -> &str {
        self.0.get(agent_id).map_or(DEFAULT_TENANT, String::as_str)
    }

    /// Whether `scope` sees the events `agent_id` appended.
    pub fn sees(&self, scope: &Scope, agent_id: &str) -> bool {
        match scope {
            Scope::All => true,
            Scope::Tenant(t) => self.tenant_of(agent_id) == t,
        }
    }

    /// Every known agent and its tenant, by agent.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> =
            self.0.iter().map(|(a, t)| (a.clone(), t.clone())).collect();
        pairs.sort();
        pairs
    }

    /// A map of these agents (tests and tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(Arc::new(
            pairs
                .into_iter()
                .map(|(a, t)| (a.to_string(), t.to_string()))
                .collect(),
        ))
    }
}

/// The live map of agents to tenants, shared by everything that reads events by tenant.
#[derive(Debug, Default)]
pub struct Tenants {
    map: RwLock<TenantMap>,
}

impl Tenants {
    /// The map now.
    pub fn snapshot(&self) -> TenantMap {
        self.map.read().expect("lock poisoned").clone()
    }

    /// Records that `agent_id` is of `tenant` (a no-op when it already is).
    pub(super) fn set(&self, agent_id: &str, tenant: &str) {
        let mut map = self.map.write().expect("lock poisoned");
        if map.0.get(agent_id).map(String::as_str) == Some(tenant) {
            return;
        }
        let mut next = (*map.0).clone();
        next.insert(agent_id.to_string(), tenant.to_string());
        *map = TenantMap(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_agents_are_of_the_default_tenant_and_scopes_see_their_own() {
        let map = TenantMap::from_pairs([("a1", "shop"), ("a2", "ads"), ("a3", DEFAULT_TENANT)]);
        assert_eq!(map.tenant_of("a1"), "shop");
        assert_eq!(map.tenant_of("never-seen"), DEFAULT_TENANT);
        let shop = Scope::Tenant("shop".into());
        assert!(map.sees(&shop, "a1"));
        assert!(!map.sees(&shop, "a2"));
        assert!(!map.sees(&shop, "never-seen"));
        assert!(map.sees(&Scope::Tenant(DEFAULT_TENANT.into()), "never-seen"));
        assert!(map.sees(&Scope::All, "a2"));
        assert_eq!(map.pairs()[0], ("a1".to_string(), "shop".to_string()));
        assert!(shop.owns(Some("shop")) && !shop.owns(None) && !shop.owns(Some("ads")));
        assert!(Scope::All.owns(None));
    }

    #[test]
    fn a_change_replaces_the_map_and_leaves_snapshots_as_they_were() {
        let tenants = Tenants::default();
        tenants.set("a1", "shop");
        let before = tenants.snapshot();
        tenants.set("a2", "ads");
        assert_eq!(before.tenant_of("a2"), DEFAULT_TENANT);
        assert_eq!(tenants.snapshot().tenant_of("a2"), "ads");
    }
}
