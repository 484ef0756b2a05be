//! Which model answers a request for a name: one this node serves, or the mesh's
//! suppliers (ranked by the router under the node's and the request's rules). The
//! local API and the embedding API (`Node::generate`) both ask here.

use std::sync::Arc;

use relaymesh_protocol::Signer;

use super::gateway::{Gateway, MeshBackend};
use super::router::{RoutePolicy, RoutingConfig};
use super::supplier::model_digest;
use crate::backend::{BackendError, Models, ServedModel};
use crate::mesh::NodeHandle;
use crate::settle::Settlement;

/// A model to run a request on: served here, or by the mesh's suppliers.
pub enum Resolved<'a> {
    /// One of this node's backends.
    Local(&'a ServedModel),
    /// Suppliers on the mesh, reached through the inference protocol.
    Mesh(ServedModel),
}

impl std::ops::Deref for Resolved<'_> {
    type Target = ServedModel;
    fn deref(&self) -> &ServedModel {
        match self {
            Resolved::Local(m) => m,
            Resolved::Mesh(m) => m,
        }
    }
}

/// Why no model answers.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The node's and the request's rules contradict each other.
    #[error("{0}")]
    Rules(String),
    /// Nobody serves a model of that name; these are the names known.
    #[error("no model {name:?} here or on the mesh")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Every name this node can answer for.
        known: Vec<String>,
    },
    /// Suppliers exist, but none fits the rules (or none can be reached).
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What choosing a model needs.
#[derive(Clone)]
pub struct Resolver {
    /// The swarm: the mesh's offers.
    pub node: NodeHandle,
    /// This node's own models.
    pub models: Arc<Models>,
    /// The app side of the inference protocol.
    pub gateway: Arc<Gateway>,
    /// The node's routing rules (maximum price, pins, trusted suppliers).
    pub routing: Arc<RoutingConfig>,
    /// The ledger: suppliers proven to equivocate get no more work.
    pub settlement: Arc<Settlement>,
}

impl Resolver {
    /// The model for `name` under the node's rules and `request`'s.
    pub async fn resolve(
        &self,
        name: &str,
        request: &RoutePolicy,
    ) -> Result<Resolved<'_>, ResolveError> {
        let policy = self
            .routing
            .policy(name)
            .and(request)
            .map_err(ResolveError::Rules)?;
        let local = self
            .models
            .get(name)
            .filter(|m| policy.digest.is_none_or(|d| model_digest(m) == d));
        let gateway = &self.gateway;
        let me = gateway.key.public_key();
        let offers: Vec<_> = self
            .node
            .offers(name)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| *k != me && !self.settlement.is_excluded(k))
            .collect();
        if offers.is_empty() {
            if let Some(m) = local {
                return Ok(Resolved::Local(m));
            }
            if self.models.get(name).is_none() {
                return Err(ResolveError::Unknown {
                    name: name.to_owned(),
                    known: self.model_names().await,
                });
            }
        }
        let ranked = match gateway.router.rank(name, offers, &policy) {
            Ok(ranked) => ranked,
            // The node's own model needs no supplier.
            Err(_) if local.is_some() => return Ok(Resolved::Local(local.expect("checked"))),
            Err(e) => return Err(BackendError::from(e).into()),
        };
        let (best_key, best) = &ranked[0];
        if let Some(m) = local {
            // Our own model competes on speed and load; it costs us nothing.
            // Until it has served a request its speed is unmeasured: it gets the benefit
            // of the doubt, or it would never be measured.
            let ours = m.offer(0, Default::default());
            let unmeasured = ours.as_ref().is_some_and(|o| o.tokens_per_sec_milli == 0);
            let ours = ours.and_then(|o| gateway.router.score(me, name, &o, None));
            let theirs = gateway
                .router
                .score(*best_key, name, best, policy.max_price);
            if unmeasured || ours >= theirs {
                return Ok(Resolved::Local(m));
            }
        }
        let price = best.price_per_cu;
        let backend = MeshBackend::new(name, gateway.clone(), ranked);
        Ok(Resolved::Mesh(ServedModel::new(Arc::new(backend), price)))
    }

    /// Names of every model this node can answer for: its own and the mesh's.
    pub async fn model_names(&self) -> Vec<String> {
        let mut names = self.models.names();
        if let Ok(rows) = self.node.models().await {
            names.extend(rows.into_iter().map(|r| r.name));
        }
        names.sort();
        names.dedup();
        names
    }
}
