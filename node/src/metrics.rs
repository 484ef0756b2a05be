//! Prometheus metrics of a node, served as text at `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: a transport (`quic`, `tcp`, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// The transport.
    pub transport: String,
}

/// Label: traffic direction (`in`, `out`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// The direction.
    pub direction: String,
}

/// Label: why a message was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: String,
}

/// Label: a ledger message's kind and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LedgerLabel {
    /// `claim`, `reveal`, `proof`, `transfer`, `evidence`.
    pub kind: String,
    /// `new`, `duplicate`, `rejected`.
    pub outcome: String,
}

/// The node's counters and gauges.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Connected peers.
    pub peers: Gauge,
    /// Open connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Gossip messages by direction.
    pub gossip_messages: Family<DirectionLabel, Counter>,
    /// Gossip payload bytes by direction.
    pub gossip_bytes: Family<DirectionLabel, Counter>,
    /// Gossip messages dropped as invalid, by reason.
    pub invalid_messages: Family<ReasonLabel, Counter>,
    /// Gossip messages this node could not hand to a slow peer in time.
    pub gossip_dropped: Counter,
    /// Suppliers in the peer table.
    pub suppliers: Gauge,
    /// Receipts (acks) a supplier accepted.
    pub receipts: Counter,
    /// Receipts τ selected into a sum tree.
    pub mined_receipts: Counter,
    /// Ledger messages by kind and outcome.
    pub ledger_messages: Family<LedgerLabel, Counter>,
    /// Ledger messages refused, by reason.
    pub ledger_rejections: Family<ReasonLabel, Counter>,
    /// Median of the peers' clocks minus this node's, ms.
    pub clock_offset_ms: Gauge,
    /// Peers whose frozen ledger checkpoint differed from this node's.
    pub checkpoint_mismatches: Counter,
    /// NAT traversal: links by kind, hole punches, AutoNAT, the relay's use.
    pub nat: crate::mesh::nat_metrics::NatMetrics,
    /// What a limit cut off, by limit (connections, streams, frames, apps, queue).
    pub limited: Family<ReasonLabel, Counter>,
    /// A private mesh's connections refused by membership, by reason (`by_peer`: a
    /// peer refused this node).
    pub membership_refused: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("relaymesh");
        let peers = Gauge::default();
        let connections = Family::<TransportLabel, Gauge>::default();
        let gossip_messages = Family::<DirectionLabel, Counter>::default();
        let gossip_bytes = Family::<DirectionLabel, Counter>::default();
        let invalid_messages = Family::<ReasonLabel, Counter>::default();
        let suppliers = Gauge::default();
        let gossip_dropped = Counter::default();
        registry.register("peers", "Connected peers", peers.clone());
        registry.register(
            "connections",
            "Open connections by transport",
            connections.clone(),
        );
        registry.register(
            "gossip_messages",
            "Gossip messages by direction",
            gossip_messages.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Gossip payload bytes by direction",
            gossip_bytes.clone(),
        );
        registry.register(
            "invalid_messages",
            "Gossip messages dropped as invalid, by reason",
            invalid_messages.clone(),
        );
        registry.register(
            "gossip_dropped",
            "Gossip messages not sent to a slow peer: its send queue was full, or a publish waited longer than 5 s",
            gossip_dropped.clone(),
        );
        registry.register(
            "suppliers",
            "Suppliers in the peer table",
            suppliers.clone(),
        );
        let receipts = Counter::default();
        let mined_receipts = Counter::default();
        let ledger_messages = Family::<LedgerLabel, Counter>::default();
        let ledger_rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "receipts",
            "Receipts (acks) accepted as a supplier",
            receipts.clone(),
        );
        registry.register(
            "mined_receipts",
            "Receipts mined into a session's sum tree",
            mined_receipts.clone(),
        );
        registry.register(
            "ledger_messages",
            "Ledger messages (announcements, claims, reveals, proofs, transfers, evidence) by kind and outcome",
            ledger_messages.clone(),
        );
        registry.register(
            "ledger_rejections",
            "Ledger messages refused, by reason",
            ledger_rejections.clone(),
        );
        let clock_offset_ms = Gauge::default();
        let checkpoint_mismatches = Counter::default();
        registry.register(
            "clock_offset_ms",
            "Median of the peers' clocks minus this node's, ms (beyond the mesh's skew, no epoch freezes here)",
            clock_offset_ms.clone(),
        );
        registry.register(
            "checkpoint_mismatches",
            "Peers whose frozen ledger checkpoint differed from this node's at the same epoch",
            checkpoint_mismatches.clone(),
        );
        let nat = crate::mesh::nat_metrics::NatMetrics::register(&mut registry);
        let limited = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "limited",
            "Connections, streams, frames and requests cut off by a limit, by limit",
            limited.clone(),
        );
        let membership_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "membership_refused",
            "Connections of a private mesh refused or cut off by membership, by reason (by_peer: a peer refused this node)",
            membership_refused.clone(),
        );
        Self {
            registry: Arc::new(registry),
            peers,
            connections,
            gossip_messages,
            gossip_bytes,
            invalid_messages,
            gossip_dropped,
            suppliers,
            receipts,
            mined_receipts,
            ledger_messages,
            ledger_rejections,
            clock_offset_ms,
            checkpoint_mismatches,
            nat,
            limited,
            membership_refused,
        }
    }
}

impl Metrics {
    /// Counts one gossip message of `bytes` bytes in direction `direction`.
    pub fn gossip(&self, direction: &str, bytes: usize) {
        let label = DirectionLabel {
            direction: direction.into(),
        };
        self.gossip_messages.get_or_create(&label).inc();
        self.gossip_bytes.get_or_create(&label).inc_by(bytes as u64);
    }

    /// Counts one thing cut off by `limit`.
    pub fn limited(&self, limit: &str) {
        self.limited
            .get_or_create(&ReasonLabel {
                reason: limit.into(),
            })
            .inc();
    }

    /// Counts one invalid message.
    pub fn invalid(&self, reason: &str) {
        self.invalid_messages
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Gossip messages and payload bytes received and sent so far (ads synced on
    /// connect included): `(messages in, messages out, bytes in, bytes out)`.
    pub fn gossip_totals(&self) -> (u64, u64, u64, u64) {
        let get = |family: &Family<DirectionLabel, Counter>, direction: &str| {
            family
                .get_or_create(&DirectionLabel {
                    direction: direction.into(),
                })
                .get()
        };
        (
            get(&self.gossip_messages, "in"),
            get(&self.gossip_messages, "out"),
            get(&self.gossip_bytes, "in"),
            get(&self.gossip_bytes, "out"),
        )
    }

    /// Counts one ledger message of `kind` with `outcome`.
    pub fn ledger(&self, kind: &str, outcome: &str) {
        self.ledger_messages
            .get_or_create(&LedgerLabel {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one refused ledger message.
    pub fn ledger_rejected(&self, kind: &str, reason: &str) {
        self.ledger(kind, "rejected");
        self.ledger_rejections
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
