//! The discrete-event engine and the mesh model: nodes, the network between them,
//! suppliers serving requests, apps routing and failing over. Metering and settlement
//! (sessions, acks, receipts, mining, claims, proofs, the ledger) are in `settle.rs` and
//! run the protocol crate's own code.
//!
//! Time is virtual (µs). Events with equal times run in the order they were scheduled,
//! every random draw comes from one seeded stream and every collection the output
//! depends on is ordered, so a seed and a scenario give byte-identical output.

use std::collections::{BTreeMap, VecDeque};

use anyhow::Result;
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::Ledger;
use relaymesh_protocol::messages::capability::{CapabilityAd, ModelOffer};
use relaymesh_protocol::messages::transfer::Transfer;
use relaymesh_protocol::metering::allowance::AppRisk;
use relaymesh_protocol::metering::tau::TauController;
use relaymesh_protocol::params::{Allocation, MeshParams};
use relaymesh_protocol::routing::score::{rank, ScoreWeights, SupplierStats};
use relaymesh_protocol::settlement::duty::CLAIM_DELAY_MS;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedString, BoundedVec, Digest, Signer};

use crate::attacks::Attacks;
use crate::gossip::Spread;
use crate::keys::{SimKey, SimVerifier};
use crate::metrics::{GossipKind, Metrics};
use crate::queue::EventQueue;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::settle::Session;

mod churn;
mod requests;

/// µs per ms.
pub(crate) const MS: u64 = 1000;
/// µs per second.
pub(crate) const SEC: u64 = 1_000_000;

/// Something that happens at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ev {
    /// The next request arrives.
    Arrival,
    /// An attempt's request reaches its supplier.
    Accept(Id),
    /// The app gives up on an attempt (dial failed, stream stalled, garbage, busy).
    GiveUp(Id, Why),
    /// The supplier finishes an attempt's stream (or stops, as planned).
    End(Id),
    /// A supplier crashes.
    Crash(u32),
    /// A supplier leaves gracefully.
    Leave(u32),
    /// A leaving supplier, its claims proven, goes offline (if still in this incarnation).
    Offline(u32, u32),
    /// A supplier comes back.
    Rejoin(u32),
    /// A supplier re-announces its ad (if still in this incarnation).
    AdRefresh(u32, u32),
    /// A session ends: its supplier claims.
    Close(Id),
    /// The app reveals for a session's claim.
    Reveal(Id),
    /// The supplier has the reveal: it proves.
    Prove(Id),
    /// No reveal came in time: the supplier proves with every receipt.
    FullReveal(Id),
    /// An epoch boundary: the ledger freezes old epochs.
    Epoch,
}

/// Why an app gave up on an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Why {
    Dial,
    Busy,
    Stall,
    Garbage,
}

/// How a supplier behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SupplierKind {
    Honest,
    Inflate,
    FakeLeaves,
    Garbage,
    Silent,
    Equivocate,
    /// Pads every token to the session's byte cap.
    PadBytes,
}

/// How an app behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppKind {
    Honest,
    StopAcking,
    NeverReveal,
    /// Claims sessions of its own against itself (`attacks.rs`).
    SelfDeal,
    /// Withholds the acks it guesses would be mined (`attacks.rs`).
    AckPick,
    /// Gives one escrow slot to sessions at several suppliers at once (`attacks.rs`).
    DoubleCommit,
}

impl AppKind {
    /// Whether the app wants its whole answer (and so counts in the success rate).
    pub(crate) fn wants_answers(self) -> bool {
        !matches!(
            self,
            AppKind::StopAcking | AppKind::AckPick | AppKind::DoubleCommit
        )
    }
}

/// What an attempt will end with, decided when its stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Done,
    Garbage,
    Silent,
    /// The app stops acking after `acked` tokens; the supplier streams the window on.
    AppStops {
        acked: u32,
    },
}

pub(crate) struct Node {
    /// One-way access latency, µs.
    pub access_us: u64,
    /// Uplink, bytes per µs.
    pub bytes_per_us: f64,
}

pub(crate) struct Ad {
    pub seq: u64,
    pub visible_us: u64,
    pub expires_us: u64,
    pub free_slots: u16,
}

pub(crate) struct Supplier {
    pub node: u32,
    pub key: SimKey,
    pub model: u32,
    pub speed: f64,
    /// The TTFT its ad states: its own measurement of a median prompt, ms.
    pub ad_ttft_ms: u32,
    pub slots: u32,
    pub busy: u32,
    pub queue: VecDeque<Id>,
    pub active: Vec<Id>,
    pub online: bool,
    pub leaving: bool,
    pub incarnation: u32,
    pub kind: SupplierKind,
    pub sybil: bool,
    pub tau: TauController,
    pub ad: Option<Ad>,
    pub last_ad_us: u64,
    /// The open session with each app.
    pub open: BTreeMap<u32, Id>,
    /// Settlement events that came while it was down, redone when it is back.
    pub duties: Vec<Ev>,
    pub served_cu: u64,
    pub credited_cu: u64,
    pub settled_served_cu: u64,
    pub settled_var: f64,
    pub excluded_us: Option<u64>,
    /// Per app that does not want its answers (the only apps whose window the model
    /// needs): its open windows, debts and payments here, by the node's own rule. Kept
    /// in memory, as the node keeps it, so a crash forgets it.
    pub risk: BTreeMap<u32, AppRisk>,
}

pub(crate) struct App {
    pub node: u32,
    pub key: SimKey,
    pub kind: AppKind,
    pub views: BTreeMap<u32, View>,
    /// The suppliers of each model this app knows and ranks (its bounded peer table);
    /// ones it can no longer use are replaced by random others.
    pub known: BTreeMap<u32, Vec<u32>>,
    /// Where its next session's escrow starts on its credit line.
    pub next_slot: u64,
}

/// What an app knows of a supplier from its own requests.
pub(crate) struct View {
    pub stats: SupplierStats,
    pub updated_us: u64,
    /// Dials failed while the supplier's ad had this sequence number: skip it until a
    /// newer ad shows it is back.
    pub dead_seq: Option<u64>,
}

pub(crate) struct Request {
    pub app: u32,
    pub id: u64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub delivered: u32,
    pub arrived_us: u64,
    pub first_token_us: Option<u64>,
    pub prefill_us: u64,
    pub candidates: Vec<u32>,
    pub next: usize,
    pub attempts: u32,
    pub honest: bool,
}

pub(crate) struct Attempt {
    pub request: Id,
    pub supplier: u32,
    pub incarnation: u32,
    pub session: Option<Id>,
    pub started_us: u64,
    pub first_token_us: u64,
    pub tokens: u32,
    plan: Plan,
    pub cut: bool,
    /// The window its supplier counts against its app from admission (queued or
    /// running) until it ends; `None` for apps whose window the model does not track.
    pub window: Option<u32>,
}

/// A vector with reusable slots. An id carries its slot's generation, so an event
/// for a removed item never reaches the item that reuses its slot.
pub(crate) struct Slab<T> {
    items: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

/// An item's id in a [`Slab`]: generation in the high half, slot in the low half.
pub(crate) type Id = u64;

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn insert(&mut self, item: T) -> Id {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.items.push((0, None));
                (self.items.len() - 1) as u32
            }
        };
        let entry = &mut self.items[slot as usize];
        entry.0 += 1;
        entry.1 = Some(item);
        (u64::from(entry.0) << 32) | u64::from(slot)
    }

    fn entry(&self, id: Id) -> Option<&(u32, Option<T>)> {
        self.items
            .get((id & 0xffff_ffff) as usize)
            .filter(|e| u64::from(e.0) == id >> 32)
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        self.entry(id).and_then(|e| e.1.as_ref())
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.items
            .get_mut((id & 0xffff_ffff) as usize)
            .filter(|e| u64::from(e.0) == id >> 32)
            .and_then(|e| e.1.as_mut())
    }

    pub fn remove(&mut self, id: Id) -> Option<T> {
        let entry = self
            .items
            .get_mut((id & 0xffff_ffff) as usize)
            .filter(|e| u64::from(e.0) == id >> 32)?;
        let item = entry.1.take();
        if item.is_some() {
            self.free.push((id & 0xffff_ffff) as u32);
        }
        item
    }

    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, (g, t))| t.as_ref().map(|t| ((u64::from(*g) << 32) | i as u64, t)))
    }
}

/// One simulation run.
pub struct Sim {
    pub(crate) sc: Scenario,
    pub(crate) params: MeshParams,
    pub(crate) verifier: SimVerifier,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    queue: EventQueue<Ev>,
    seq: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) suppliers: Vec<Supplier>,
    pub(crate) apps: Vec<App>,
    pub(crate) by_model: Vec<Vec<u32>>,
    model_weights: Vec<f64>,
    pub(crate) requests: Slab<Request>,
    pub(crate) attempts: Slab<Attempt>,
    pub(crate) sessions: Slab<Session>,
    pub(crate) ledger: Ledger,
    pub(crate) spread: Spread,
    pub(crate) m: Metrics,
    pub(crate) text: Vec<u8>,
    weights: ScoreWeights,
    ad_size: usize,
    arrivals_left: u64,
    pub(crate) counter: u64,
    end_us: u64,
    /// Escrow of each session, micro-credits.
    pub(crate) escrow_per_session: u64,
    /// What the economic adversaries took and paid (`attacks.rs`).
    pub(crate) attacks: Attacks,
}

impl Sim {
    /// Sets up the mesh of a scenario.
    pub fn new(sc: &Scenario) -> Result<Self> {
        sc.validate()?;
        let mut rng = Rng::new(sc.seed);
        let n_suppliers = sc.suppliers();
        let n_apps = sc.nodes - n_suppliers;
        let mode = sc.signatures;
        let nodes: Vec<Node> = (0..sc.nodes)
            .map(|_| {
                let home = rng.chance(sc.network.home_share);
                let (lat, mbps) = if home {
                    (sc.network.home_ms, sc.network.home_mbps)
                } else {
                    (sc.network.dc_ms, sc.network.dc_mbps)
                };
                Node {
                    access_us: (rng.lognormal(lat) * MS as f64) as u64,
                    bytes_per_us: mbps / 8.0,
                }
            })
            .collect();

        // Models are asked for with weight 1/(m+1); suppliers are spread the same way.
        let model_weights: Vec<f64> = (0..sc.models).map(|m| 1.0 / f64::from(m + 1)).collect();
        let total_weight: f64 = model_weights.iter().sum();
        let pick_model = |rng: &mut Rng| {
            let mut x = rng.unit() * total_weight;
            for (m, w) in model_weights.iter().enumerate() {
                if x < *w {
                    return m as u32;
                }
                x -= w;
            }
            0
        };

        let a = &sc.adversaries;
        let honest_suppliers = n_suppliers - a.sybil_identities;
        let median_speed = sc.gpu.tokens_per_sec.median;
        // The operator's capacity (streams at the median speed) split among its
        // identities: fewer slots each, and slower streams where a slot is a fraction.
        let sybil_streams = a.sybil_capacity * f64::from(sc.gpu.slots);
        let identities = f64::from(a.sybil_identities.max(1));
        let sybil_slots = (sybil_streams / identities).floor().max(1.0) as u32;
        let sybil_speed = median_speed * sybil_streams / (identities * f64::from(sybil_slots));
        let params = sc.mesh_params()?;
        let tau0 = initial_tau(sc);
        let mut suppliers = Vec::with_capacity(n_suppliers as usize);
        for i in 0..n_suppliers {
            let sybil = i >= honest_suppliers;
            let kind = if sybil {
                SupplierKind::Honest
            } else {
                let x = rng.unit();
                let bands = [
                    (a.inflate, SupplierKind::Inflate),
                    (a.fake_leaves, SupplierKind::FakeLeaves),
                    (a.garbage, SupplierKind::Garbage),
                    (a.silent, SupplierKind::Silent),
                    (a.equivocate, SupplierKind::Equivocate),
                    (a.pad_bytes, SupplierKind::PadBytes),
                ];
                let mut edge = 0.0;
                let mut kind = SupplierKind::Honest;
                for (share, k) in bands {
                    edge += share;
                    if x < edge {
                        kind = k;
                        break;
                    }
                }
                kind
            };
            let speed = if sybil {
                sybil_speed
            } else {
                rng.lognormal(sc.gpu.tokens_per_sec).max(1.0)
            };
            suppliers.push(Supplier {
                node: i,
                key: SimKey::derive(sc.seed, i, mode),
                model: if sybil { 0 } else { pick_model(&mut rng) },
                speed,
                ad_ttft_ms: (sc.load.prompt_tokens.median / (speed * sc.gpu.prefill_factor)
                    * 1000.0) as u32
                    + 20,
                slots: if sybil { sybil_slots } else { sc.gpu.slots },
                busy: 0,
                queue: VecDeque::new(),
                active: Vec::new(),
                online: true,
                leaving: false,
                incarnation: 0,
                kind,
                sybil,
                tau: TauController::new(
                    tau0,
                    params.tau_target_mined,
                    params.tau_min,
                    params.tau_max,
                ),
                ad: None,
                last_ad_us: 0,
                open: BTreeMap::new(),
                duties: Vec::new(),
                served_cu: 0,
                credited_cu: 0,
                settled_served_cu: 0,
                settled_var: 0.0,
                excluded_us: None,
                risk: BTreeMap::new(),
            });
        }
        let mut by_model = vec![Vec::new(); sc.models as usize];
        for (i, s) in suppliers.iter().enumerate() {
            by_model[s.model as usize].push(i as u32);
        }
        let apps: Vec<App> = (0..n_apps)
            .map(|j| {
                let x = rng.unit();
                let kind = if x < a.stop_acking {
                    AppKind::StopAcking
                } else if x < a.stop_acking + a.never_reveal {
                    AppKind::NeverReveal
                } else if x < a.stop_acking + a.never_reveal + a.self_deal {
                    AppKind::SelfDeal
                } else if x < a.stop_acking + a.never_reveal + a.self_deal + a.ack_pick {
                    AppKind::AckPick
                } else if x < a.stop_acking
                    + a.never_reveal
                    + a.self_deal
                    + a.ack_pick
                    + a.double_commit
                {
                    AppKind::DoubleCommit
                } else {
                    AppKind::Honest
                };
                App {
                    node: n_suppliers + j,
                    key: SimKey::derive(sc.seed, n_suppliers + j, mode),
                    kind,
                    views: BTreeMap::new(),
                    known: BTreeMap::new(),
                    next_slot: 0,
                }
            })
            .collect();

        // Credit: genesis gives one treasury account everything, and the treasury funds
        // every app with a signed transfer in epoch 0 (genesis holds at most 4096
        // accounts). Credit received is spendable once its epoch's line is final
        // everywhere (`funding_lag_epochs` later): the run starts then.
        let treasury = SimKey::derive(sc.seed, u32::MAX, mode);
        let mut params = params;
        params.genesis = BoundedVec::try_from_vec(vec![Allocation {
            account: treasury.public_key(),
            amount: u64::MAX / 2,
        }])
        .expect("one allocation");
        let verifier = SimVerifier(sc.signatures);
        let mut ledger = Ledger::new(params.clone());
        let per_app = u64::MAX / 2 / u64::from(n_apps.max(1));
        for (j, app) in apps.iter().enumerate() {
            let transfer = Signed::sign(
                Transfer {
                    version: relaymesh_protocol::PROTOCOL_VERSION,
                    mesh_id: params.mesh_id(),
                    from: treasury.public_key(),
                    to: app.key.public_key(),
                    amount: per_app,
                    epoch: 0,
                    slot_start: j as u64 * per_app,
                },
                &treasury,
            );
            ledger
                .apply_transfer(&transfer, &verifier)
                .map_err(|e| anyhow::anyhow!("funding app {j}: {e}"))?;
        }
        let t0 = (params.funding_lag_epochs() + 1) * params.epoch_ms * MS;
        // Each session escrows a sliver of its app's credit: the model's sessions are
        // far cheaper, so escrow never binds an honest app.
        let escrow_per_session = per_app / 4096;

        let ad_size = ad_size(&params, &suppliers[0]);
        let text = vec![b'x'; (sc.mesh.ack_every_tokens * sc.load.max_token_bytes) as usize];
        let spread = Spread::new(sc, &nodes);
        let end_us = t0 + (sc.duration_s * SEC as f64) as u64;
        let mut sim = Sim {
            verifier,
            params,
            rng,
            now: t0,
            queue: EventQueue::new(),
            seq: 0,
            nodes,
            suppliers,
            apps,
            by_model,
            model_weights,
            requests: Slab::new(),
            attempts: Slab::new(),
            sessions: Slab::new(),
            ledger,
            spread,
            m: Metrics::default(),
            text,
            weights: ScoreWeights::default(),
            ad_size,
            arrivals_left: sc.requests,
            counter: 0,
            end_us,
            escrow_per_session,
            attacks: Attacks::default(),
            sc: sc.clone(),
        };
        sim.m.nodes = u64::from(sc.nodes);
        sim.m.free_riders = sim
            .apps
            .iter()
            .filter(|a| matches!(a.kind, AppKind::StopAcking | AppKind::AckPick))
            .count() as u64;
        sim.m.duration_h = sc.duration_s / 3600.0;
        sim.m.suppliers = u64::from(n_suppliers);
        let run_us = end_us - t0;
        for s in 0..n_suppliers {
            // Suppliers announce themselves within the first seconds, late joiners at
            // any time of the run; until then they are offline and unknown.
            let late = sim.rng.chance(sc.churn.late_joins);
            let window = if late { run_us } else { 5 * SEC };
            let at = t0 + sim.rng.below(window as usize) as u64;
            sim.suppliers[s as usize].online = !late;
            sim.schedule(at, Ev::Rejoin(s));
            sim.schedule_churn(s, at);
        }
        if sc.requests > 0 {
            let first = t0 + sim.next_arrival_gap();
            sim.schedule(first, Ev::Arrival);
        }
        sim.schedule(t0 + sim.params.epoch_ms * MS, Ev::Epoch);
        Ok(sim)
    }

    pub(crate) fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(at.max(self.now), self.seq, ev);
    }

    fn next_arrival_gap(&mut self) -> u64 {
        let mean = self.sc.duration_s * SEC as f64 / self.sc.requests as f64;
        self.rng.exponential(mean) as u64
    }

    /// When settlement is over: the last arrival, plus a session, its claim delay (the
    /// protocol's `CLAIM_DELAY_MS`, as the node's), the
    /// reveal wait and a margin for gossip and offline apps.
    fn drain_until(&self) -> u64 {
        let m = &self.sc.mesh;
        self.end_us
            + CLAIM_DELAY_MS * MS
            + (m.session_s + 3 * m.epoch_s.max(10) + 120) * SEC
            + (self.sc.churn.app_downtime_s.median * 4.0 * SEC as f64) as u64
    }

    /// Runs to the end; `progress` is called now and then with the share done.
    pub fn run(mut self, mut progress: impl FnMut(f64)) -> Metrics {
        let until = self.drain_until();
        while let Some((at, ev)) = self.queue.pop() {
            if at > until {
                break;
            }
            self.now = at;
            self.m.events += 1;
            if self.m.events.is_multiple_of(65_536) {
                progress(at as f64 / until as f64);
            }
            self.handle(ev);
        }
        self.now = self.now.max(until);
        self.finish();
        progress(1.0);
        self.m
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => self.arrival(),
            Ev::Accept(a) => self.accept(a),
            Ev::GiveUp(a, why) => self.give_up(a, why),
            Ev::End(a) => self.end(a),
            Ev::Crash(s) => self.crash(s),
            Ev::Leave(s) => self.leave(s),
            Ev::Rejoin(s) => self.rejoin(s),
            Ev::Offline(s, inc) => {
                let sup = &mut self.suppliers[s as usize];
                if sup.online && sup.incarnation == inc {
                    sup.online = false;
                    sup.leaving = false;
                    sup.incarnation += 1;
                    self.schedule_rejoin(s);
                }
            }
            Ev::AdRefresh(s, inc) => {
                let sup = &self.suppliers[s as usize];
                if sup.online && !sup.leaving && sup.incarnation == inc {
                    self.publish_ad(s);
                    let next = self.now + self.sc.mesh.ad_refresh_s * SEC;
                    self.schedule(next, Ev::AdRefresh(s, inc));
                }
            }
            Ev::Close(x) => self.close(x),
            Ev::Reveal(x) => self.reveal(x),
            Ev::Prove(x) => self.prove(x, false),
            Ev::FullReveal(x) => self.prove(x, true),
            Ev::Epoch => {
                self.record_payments();
                self.ledger.advance(self.now / MS);
                let next = self.now + self.params.epoch_ms * MS;
                self.schedule(next, Ev::Epoch);
            }
        }
    }

    /// One-way latency between two nodes, µs, for a message of `bytes`.
    pub(crate) fn one_way(&self, a: u32, b: u32, bytes: usize) -> u64 {
        let (na, nb) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        na.access_us + nb.access_us + (bytes as f64 / na.bytes_per_us) as u64
    }

    /// A retransmission delay if the message is lost.
    fn loss_delay(&mut self, rtt: u64) -> u64 {
        if self.rng.chance(self.sc.network.loss) {
            (2 * rtt).max(200 * MS)
        } else {
            0
        }
    }

    /// The figures that need the whole run.
    fn finish(&mut self) {
        self.finish_settlement();
        self.finish_attacks();
        // Model 0's capacity (as throughput: streams × tokens/s) and CUs served, all
        // and the sybil operator's.
        let (mut total_capacity_0, mut sybil_capacity) = (0.0, 0.0);
        let (mut served_0, mut sybil_served) = (0u64, 0u64);
        for s in &self.by_model[0] {
            let sup = &self.suppliers[*s as usize];
            let capacity = f64::from(sup.slots) * sup.speed;
            total_capacity_0 += capacity;
            served_0 += sup.served_cu;
            if sup.sybil {
                sybil_capacity += capacity;
                sybil_served += sup.served_cu;
            }
        }
        if served_0 > 0 {
            self.m.sybil_share = sybil_served as f64 / served_0 as f64;
        }
        if total_capacity_0 > 0.0 {
            self.m.sybil_capacity_share = sybil_capacity / total_capacity_0;
        }
        let seconds = self.sc.duration_s;
        let copies = self.sc.network.gossip_copies;
        let ihave = self.spread.ihave_bytes_per_message();
        let per_node =
            |msgs: u64, bytes: u128| (bytes as f64 * copies + msgs as f64 * ihave) / seconds;
        let m = &mut self.m;
        m.ad_bytes_per_node_s = per_node(m.gossip_msgs[0], m.gossip_bytes[0]);
        m.ledger_bytes_per_node_s = (1..5)
            .map(|k| per_node(m.gossip_msgs[k], m.gossip_bytes[k]))
            .sum();
        m.gossip_bytes_per_node_s = m.ad_bytes_per_node_s + m.ledger_bytes_per_node_s;
        m.ttft_ms.finish();
        m.ttft_overhead_ms.finish();
        m.settle_ms.finish();
        m.convergence_ms.finish();
    }
}

/// A first τ for every supplier: the expected CUs of a session over the target.
fn initial_tau(sc: &Scenario) -> u64 {
    let per_request = sc.load.prompt_tokens.median * f64::from(sc.load.bytes_per_token)
        + sc.load.output_tokens.median * f64::from(sc.load.bytes_per_token) * 4.0;
    let receipts = (sc.load.output_tokens.median / f64::from(sc.mesh.ack_every_tokens)).max(1.0);
    let per_receipt = per_request / receipts;
    (per_receipt * 2.0 / f64::from(sc.mesh.tau_target_mined.max(1))).max(1.0) as u64
}

/// Bytes of one supplier's capability ad on the wire (one model offer).
fn ad_size(params: &MeshParams, s: &Supplier) -> usize {
    let ad = CapabilityAd {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        mesh_id: params.mesh_id(),
        supplier: s.key.public_key(),
        seq: 1_700_000_000_000,
        issued_ms: 1_700_000_000_000,
        expires_ms: 1_700_000_300_000,
        models: BoundedVec::try_from_vec(vec![ModelOffer {
            name: BoundedString::new("SmolLM2-135M-Instruct").expect("short"),
            gguf_digest: Some(Digest([7; 32])),
            manifest: None,
            context_length: 8192,
            free_slots: 4,
            total_slots: 4,
            tokens_per_sec_milli: 40_000,
            ttft_ms: 120,
            price_per_cu: 1,
            cu: Default::default(),
            tau: 1000,
            max_token_bytes: 32,
            details: Default::default(),
            embedding_dims: None,
        }])
        .expect("one offer"),
    };
    Signed::sign(ad, &s.key).encode().map_or(400, |b| b.len())
}
