//! Metrics of NAT traversal: links by kind, hole punches, AutoNAT dial-backs, and the
//! use of this node's relay (bootstrap nodes) against its bounds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: how a connection reaches its peer (`direct`, `hole-punched`, `relayed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    /// The kind.
    pub kind: String,
}

/// Label: how something ended (`ok`, `failed`, `accepted`, `denied`, `closed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: String,
}

/// NAT traversal's counters and gauges.
#[derive(Clone, Default)]
pub struct NatMetrics {
    /// Open connections by link kind.
    pub links: Family<LinkLabel, Gauge>,
    /// Hole punches (DCUtR) by outcome.
    pub hole_punches: Family<OutcomeLabel, Counter>,
    /// This node's AutoNAT probes by outcome (a dial-back reached it, or not).
    pub probes: Family<OutcomeLabel, Counter>,
    /// Dial-backs this node made for others (AutoNAT server) by outcome.
    pub dial_backs: Family<OutcomeLabel, Counter>,
    /// Reservation requests at this node's relay by outcome.
    pub relay_reservations: Family<OutcomeLabel, Counter>,
    /// Relay slots held at this node now.
    pub relay_slots: Gauge,
    /// Circuit requests at this node's relay by outcome (`closed` when one ends).
    pub relay_circuits: Family<OutcomeLabel, Counter>,
    /// Circuits open through this node's relay now.
    pub relay_circuits_open: Gauge,
}

impl NatMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "links",
            "Open connections by link kind (direct, hole-punched, relayed)",
            m.links.clone(),
        );
        registry.register(
            "hole_punches",
            "Direct links hole-punched from relayed ones (DCUtR), by outcome",
            m.hole_punches.clone(),
        );
        registry.register(
            "autonat_probes",
            "AutoNAT dial-backs to this node, by outcome (ok: peers can dial it there)",
            m.probes.clone(),
        );
        registry.register(
            "autonat_dial_backs",
            "Dial-backs this node made for others' AutoNAT probes, by outcome",
            m.dial_backs.clone(),
        );
        registry.register(
            "relay_reservations",
            "Slot reservations asked of this node's relay, by outcome",
            m.relay_reservations.clone(),
        );
        registry.register(
            "relay_slots",
            "Relay slots held at this node now",
            m.relay_slots.clone(),
        );
        registry.register(
            "relay_circuits",
            "Circuits asked of this node's relay, by outcome (closed: one ended)",
            m.relay_circuits.clone(),
        );
        registry.register(
            "relay_circuits_open",
            "Circuits open through this node's relay now",
            m.relay_circuits_open.clone(),
        );
        m
    }

    /// Counts one `outcome` in `family`.
    pub fn count(family: &Family<OutcomeLabel, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The gauge of open links of `kind`.
    pub fn link(&self, kind: &str) -> Gauge {
        self.links
            .get_or_create(&LinkLabel { kind: kind.into() })
            .clone()
    }
}
