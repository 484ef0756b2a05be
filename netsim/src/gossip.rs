//! The gossip model. Messages are not sent to 10,000 simulated inboxes: a message's
//! spread is computed from the mesh's size and degree and the latency distribution,
//! and each node's load from message counts and encoded sizes.
//!
//! - A message reaches everyone in `ceil(ln N / ln D)` hops; hop `h` reaches
//!   `min(D^h, N)` nodes and lasts as long as the slowest of them: the maximum of `n`
//!   draws, taken exactly as the quantile `u^(1/n)` of the access-latency distribution
//!   (of home nodes where there are any; they are the slow tail), plus the sender's
//!   access latency and the message's transmission time on a home uplink.
//! - A lost copy is repaired by the next heartbeat's IHAVE/IWANT: a hop is one heartbeat
//!   longer when some node of it lost every copy (probability `1 - (1 - loss^c)^n`).
//! - Each node receives `gossip_copies` copies of every message, and announces each
//!   message id to `D` peers in each of the 3 heartbeats of gossipsub's history window.

use crate::rng::Rng;
use crate::scenario::{LogNormal, Scenario};
use crate::sim::{Node, MS};

/// Bytes of a gossip message id in an IHAVE.
const ID_BYTES: f64 = 32.0;
/// Heartbeats a message id is announced in (gossipsub `history_gossip`).
const HISTORY_GOSSIP: f64 = 3.0;

/// How messages spread through the mesh.
pub(crate) struct Spread {
    hops: u32,
    degree: f64,
    nodes: f64,
    home: LogNormal,
    dc: LogNormal,
    home_share: f64,
    loss: f64,
    copies: f64,
    heartbeat_us: u64,
    home_bytes_per_us: f64,
    /// A typical spread time, µs: when most nodes have a message.
    pub typical_us: u64,
}

impl Spread {
    pub fn new(sc: &Scenario, nodes: &[Node]) -> Self {
        let n = nodes.len().max(2) as f64;
        let d = f64::from(sc.network.gossip_degree);
        let hops = (n.ln() / d.ln()).ceil().max(1.0) as u32;
        let median_access = if sc.network.home_share > 0.0 {
            sc.network.home_ms.median
        } else {
            sc.network.dc_ms.median
        };
        Self {
            hops,
            degree: d,
            nodes: n,
            home: sc.network.home_ms,
            dc: sc.network.dc_ms,
            home_share: sc.network.home_share,
            loss: sc.network.loss,
            copies: sc.network.gossip_copies.max(1.0),
            heartbeat_us: (sc.network.heartbeat_ms * MS as f64) as u64,
            home_bytes_per_us: sc.network.home_mbps / 8.0,
            typical_us: (f64::from(hops) * 2.0 * median_access * MS as f64) as u64,
        }
    }

    /// Time until every online node has a message of `bytes`, µs.
    pub fn delay(&self, rng: &mut Rng, bytes: usize) -> u64 {
        let mut total = 0.0;
        let transmit = bytes as f64 / self.home_bytes_per_us;
        for h in 1..=self.hops {
            let reached = self.degree.powi(h as i32).min(self.nodes);
            let home = (reached * self.home_share).round();
            let (dist, n) = if home >= 1.0 {
                (self.home, home)
            } else {
                (self.dc, reached)
            };
            let q = rng.unit().powf(1.0 / n);
            let slowest = Rng::lognormal_quantile(dist, q);
            let sender = rng.lognormal(dist);
            total += (slowest + sender) * MS as f64 + transmit;
            let miss_one = self.loss.powf(self.copies);
            if miss_one > 0.0 && rng.chance(1.0 - (1.0 - miss_one).powf(reached)) {
                total += self.heartbeat_us as f64;
            }
        }
        total as u64
    }

    /// IHAVE bytes each node sends per gossip message.
    pub fn ihave_bytes_per_message(&self) -> f64 {
        HISTORY_GOSSIP * self.degree * ID_BYTES
    }
}
