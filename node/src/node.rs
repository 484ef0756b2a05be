//! A running node: its swarm task, its API server and its data dir, started together
//! and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use relaymesh_protocol::Keypair;

use crate::config::{Identity, NodeConfig};
use crate::mesh::{self, NodeHandle, SwarmError};
use crate::metrics::Metrics;
use crate::store::{load_or_create_identity, DataDir, StoreError};

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir is unusable (in use, unreadable, bad key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The swarm could not start.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// This node is not a member of the private mesh it names.
    #[error("{0}")]
    Membership(String),
    /// The API address could not be bound.
    #[error("cannot serve the local API on {addr}: {source}; choose another --api")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started node.
pub struct Node {
    handle: NodeHandle,
    key: Keypair,
    /// `None` once the node was stopped (`shutdown`, `wait`).
    swarm_task: Option<tokio::task::JoinHandle<()>>,
    api: Option<(SocketAddr, crate::api::ApiServer)>,
    metrics: Metrics,
    data_dir: Option<DataDir>,
    supplier: Option<tokio::task::JoinHandle<()>>,
    settle_task: Option<tokio::task::JoinHandle<()>>,
    settlement: Arc<crate::settle::Settlement>,
    stopping: crate::stopping::Stopping,
    resolver: crate::infer::resolve::Resolver,
}

impl Node {
    /// Opens the data dir (if any), starts the swarm and the API.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let (key, data_dir) = match &config.identity {
            Identity::DataDir(path) => {
                // Open the database first: it is the lock that keeps a second process out.
                let dir = DataDir::open(path)?;
                let key =
                    load_or_create_identity(path, || Keypair::generate(&mut rand_core::OsRng))?;
                (key, Some(dir))
            }
            Identity::Ephemeral(key) => (key.clone(), None),
        };
        let metrics = Metrics::default();
        let api_addr = config.api;
        let limits = config.limits.clone();
        let max_connections = config.max_connections as usize;
        let (models, keys) = (config.models.clone(), config.api_keys.clone());
        let params = config.mesh.clone();
        let serves = config.role == crate::config::Role::Full && !models.is_empty();
        let routing = Arc::new(config.routing.clone());
        // Every node keeps the ledger, and an app's sessions and acks, and a supplier its
        // receipts; one without a data dir keeps them in a temporary database (so a light
        // node without one still reveals its sessions, instead of leaving every claim to
        // the full reveal, and a supplier embedded without one still mines and claims
        // what it served, for as long as it runs).
        let db = match &data_dir {
            Some(dir) => dir.db().clone(),
            // In the temporary directory, not sled's default of /dev/shm (memory, and
            // 64 MiB in a default container): a supplier keeps every receipt here until
            // its claim's epoch is final. Removed when the node stops.
            None => sled::Config::new()
                .temporary(true)
                .path(std::env::temp_dir().join(format!(
                    "relaymesh-{}-{:016x}",
                    std::process::id(),
                    rand_core::RngCore::next_u64(&mut rand_core::OsRng)
                )))
                .open()
                .map_err(|source| {
                    NodeError::Store(StoreError::Database {
                        path: "(temporary)".into(),
                        source,
                    })
                })?,
        };
        let db_error = |source| {
            NodeError::Store(StoreError::Database {
                path: data_dir
                    .as_ref()
                    .map_or("(temporary)".into(), |d| d.path().to_owned()),
                source,
            })
        };
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        let miner = match serves {
            true => Some(Arc::new(crate::mining::Miner::new(
                tree("mining")?,
                &params,
            ))),
            false => None,
        };
        let requests = tree("requests")?;
        let settlement = Arc::new(
            crate::settle::Settlement::open(
                key.clone(),
                params.clone(),
                &db,
                miner.clone(),
                metrics.clone(),
                crate::mesh::now_ms(),
            )
            .map_err(db_error)?,
        );
        let membership = open_membership(&config, &key, &db, &metrics, serves)?;
        let (handle, swarm_task) = mesh::spawn(
            config,
            key.clone(),
            metrics.clone(),
            Some(settlement.clone()),
            membership.clone(),
        )?;
        let settle_task = crate::settle::spawn(settlement.clone(), handle.clone());
        let stopping = crate::stopping::Stopping::default();
        // The app side of the inference protocol: the API's, and the embedding API's.
        let gateway = crate::infer::gateway::Gateway::new(
            handle.clone(),
            key.clone(),
            params.clone(),
            settlement.clone(),
            crate::infer::router::Router::new(),
            crate::infer::gateway::Timeouts {
                queue_places: limits.queue_places,
                ..routing.timeouts
            },
        );
        let resolver = crate::infer::resolve::Resolver {
            node: handle.clone(),
            models: models.clone(),
            gateway: gateway.clone(),
            routing: routing.clone(),
            settlement: settlement.clone(),
        };
        let api = match api_addr {
            Some(addr) => Some(
                crate::api::serve(
                    addr,
                    crate::api::ApiState::new(metrics.clone(), keys, resolver.clone())
                        .with_stopping(stopping.clone())
                        .with_body_limit(limits.http_body_bytes),
                    &limits,
                )
                .await
                .map_err(|source| NodeError::Api { addr, source })?,
            ),
            None => None,
        };
        // A node that serves models answers the mesh's inference streams.
        let supplier = if serves {
            let ctx = Arc::new(crate::infer::supplier::SupplierContext {
                key: key.clone(),
                mesh_id: params.mesh_id(),
                limits: crate::infer::app_limits::AppLimits::with_caps(
                    crate::infer::window(&params),
                    limits.streams_per_app,
                    limits.sessions_per_app,
                    crate::infer::claims::Claims::new(
                        max_connections,
                        limits.connections_per_ip as usize,
                        handle.peer_networks.clone(),
                    ),
                ),
                budgets: Default::default(),
                params: params.clone(),
                models,
                seen: crate::infer::supplier::SeenRequests::new(requests),
                miner: miner.clone(),
                settlement: Some(settlement.clone()),
                metrics: metrics.clone(),
                acks: crate::infer::verify::AckVerifier::spawn(),
                membership: handle.membership().cloned(),
                stream_slots: crate::infer::stream_slots::StreamSlots::new(
                    limits.streams,
                    limits.streams_per_peer,
                    limits.unstarted_streams_per_peer,
                ),
                fresh: Default::default(),
                stopping: stopping.clone(),
                prompt_bytes: limits.prompt_bytes,
            });
            let protocol = crate::mesh::names::infer_protocol(&params.mesh_id());
            Some(
                crate::infer::supplier::spawn(handle.streams(), protocol, ctx)
                    .map_err(|e| NodeError::Swarm(SwarmError::Setup(e)))?,
            )
        } else {
            None
        };
        Ok(Self {
            handle,
            key,
            swarm_task: Some(swarm_task),
            api,
            metrics,
            data_dir,
            supplier,
            settle_task: Some(settle_task),
            settlement,
            stopping,
            resolver,
        })
    }

    /// The handle to the swarm.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// The node's key (its identity and account).
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// Where the API listens, if it does.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|(addr, _)| *addr)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The node's ledger and settlement duties.
    pub fn settlement(&self) -> &Arc<crate::settle::Settlement> {
        &self.settlement
    }

    /// Runs `request` on the model called `model`, as the local API would: this node's
    /// own if it serves it and scores best, else the mesh's best suppliers under the
    /// node's routing rules, metered (sessions, acks, receipts), with failover and
    /// hedging. Read the answer with [`Measured::next`](crate::backend::Measured::next);
    /// dropping it cancels the request.
    pub async fn generate(
        &self,
        model: &str,
        request: crate::backend::GenRequest,
    ) -> Result<crate::backend::Measured, crate::backend::BackendError> {
        use crate::backend::BackendError;
        use crate::infer::resolve::ResolveError;
        if self.stopping.is_stopping() {
            return Err(BackendError::Unavailable(crate::stopping::STOPPED.into()));
        }
        let resolved = self
            .resolver
            .resolve(model, &crate::infer::router::RoutePolicy::default())
            .await
            .map_err(|e| match e {
                ResolveError::Rules(why) => BackendError::Invalid(why),
                unknown @ ResolveError::Unknown { .. } => {
                    BackendError::NotFound(unknown.to_string())
                }
                ResolveError::Backend(e) => e,
            })?;
        Ok(resolved
            .generate(request)
            .await?
            .until_stopped(&self.stopping))
    }

    /// Waits (at most `timeout`) until a model called `model` can be asked as
    /// [`Self::generate`] would: served here, or by a supplier on the mesh that the
    /// node's routing rules allow. Whether it can.
    pub async fn wait_for_model(&self, model: &str, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let rules = crate::infer::router::RoutePolicy::default();
        loop {
            if self.resolver.resolve(model, &rules).await.is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The addresses the node listens on, once its listeners are open (they open just
    /// after [`Self::start`] returns): waits at most `timeout`, and is empty if none
    /// opened by then. Each is a multiaddr ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self, timeout: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(status) = self.handle.status().await else {
                return Vec::new();
            };
            if !status.listen_addrs.is_empty() || tokio::time::Instant::now() >= deadline {
                return status.listen_addrs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The node's ledger: balances, its account, the claims.
    pub fn ledger(&self) -> crate::settle::LedgerReport {
        self.settlement.report(crate::mesh::now_ms())
    }

    /// The data dir, if the node has one.
    pub fn data_dir(&self) -> Option<&DataDir> {
        self.data_dir.as_ref()
    }

    /// Runs until the swarm task ends (after `shutdown`, or if it fails).
    pub async fn wait(mut self) {
        if let Some(task) = self.swarm_task.as_mut() {
            let _ = task.await;
            self.swarm_task = None;
        }
        self.abort_tasks();
        if let Some((_, api)) = self.api.take() {
            api.stop(std::time::Duration::from_secs(2)).await;
        }
    }

    /// Ends the settlement and supplier tasks at once.
    fn abort_tasks(&mut self) {
        for task in [self.settle_task.take(), self.supplier.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }

    /// Stops the node, gracefully for its peers and clients: a supplier withdraws its
    /// ads (apps stop choosing it at once) and ends its streams with a refusal the
    /// app fails over on; the API's answers in flight get
    /// [`STOP_GRACE`](crate::stopping::STOP_GRACE) to finish, then end with an error;
    /// connections are closed, not dropped; the database is flushed.
    pub async fn shutdown(mut self) {
        self.stopping.stop();
        if let Some((_, api)) = self.api.as_mut() {
            api.stop_accepting();
        }
        let _ = self.handle.withdraw().await;
        if let Some(task) = self.supplier.as_mut() {
            // Ends once its streams have (bounded). Awaited in place: should this
            // future be dropped part way, `Drop` still aborts it.
            let _ = task.await;
            self.supplier = None;
        }
        if let Some((_, api)) = self.api.take() {
            api.stop(crate::stopping::STOP_GRACE + std::time::Duration::from_secs(1))
                .await;
        }
        let _ = self.handle.shutdown().await;
        if let Some(task) = self.swarm_task.as_mut() {
            let _ = task.await;
            self.swarm_task = None;
        }
        self.abort_tasks();
        if let Some(dir) = &self.data_dir {
            let _ = dir.db().flush_async().await;
        }
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] (an app returning early, a test that
    /// panics) stops at once rather than leaving its tasks running detached: its
    /// swarm (connections dropped, not closed), API, supplier and settlement tasks are
    /// aborted. The database is not flushed here (sled flushes on its own within its
    /// commit interval; the miner's records are group-committed every 250 ms).
    fn drop(&mut self) {
        // Whatever is left: all of it without `shutdown`, or what a `shutdown` or
        // `wait` dropped part way (an embedder's timeout) had not reached yet.
        if let Some(swarm) = self.swarm_task.take() {
            self.stopping.stop();
            swarm.abort();
        }
        self.abort_tasks();
        if let Some((_, api)) = self.api.as_mut() {
            api.abort();
        }
    }
}

/// A private mesh's membership: this node's invite (given now, or stored before) must
/// admit it, in a role that lets it do what it is configured to; `None` for a public
/// mesh.
fn open_membership(
    config: &NodeConfig,
    key: &Keypair,
    db: &sled::Db,
    metrics: &Metrics,
    serves: bool,
) -> Result<Option<Arc<crate::mesh::membership::Membership>>, NodeError> {
    let tree = db
        .open_tree(crate::mesh::membership::TREE)
        .map_err(|source| {
            NodeError::Store(StoreError::Database {
                path: "(membership)".into(),
                source,
            })
        })?;
    let Some(membership) = crate::mesh::membership::Membership::open(
        &config.mesh,
        key,
        config.invite.clone(),
        tree,
        metrics.clone(),
        crate::mesh::now_ms(),
    )
    .map_err(NodeError::Membership)?
    else {
        return Ok(None);
    };
    let own = membership.own();
    if serves && !own.role.supplies() {
        return Err(NodeError::Membership(format!(
            "this node's invite admits it as {}, which may use the mesh's suppliers but not serve: drop --serve, or ask the owner for a supplier invite",
            own.role
        )));
    }
    tracing::info!(
        role = %own.role,
        invite = own.invite.map(|i| i.to_hex()).unwrap_or_else(|| "owner".into()),
        expires_ms = own.expires_ms,
        "member of private mesh {}",
        config.mesh.name.as_str()
    );
    Ok(Some(Arc::new(membership)))
}
