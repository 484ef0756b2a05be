//! Metering and settlement in the model, with the protocol crate's own code: sessions
//! opened and countersigned, one signed ack per increment, receipts checked and
//! threshold-mined into a sum tree, claims, reveals, sampled and full proofs, and one
//! ledger that validates each message once for all simulated nodes (every node would
//! reach the same verdict from the same bytes; the gossip model says when each has it).

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::ledger::{Applied, ClaimStatus, LedgerError};
use relaymesh_protocol::messages::ack::Ack;
use relaymesh_protocol::messages::claim::{Claim, SignedClaim};
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::ledger::{LedgerBody, LedgerMessage};
use relaymesh_protocol::messages::request::SignedRelayRequest;
use relaymesh_protocol::messages::reveal::{commitment, SignedReveal};
use relaymesh_protocol::messages::session::{SessionOpen, SignedSessionOpen};
use relaymesh_protocol::metering::ack_chain::MAX_ACK_CHAIN;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::receipt::{EncodedRequest, Receipt, ReceiptFacts};
use relaymesh_protocol::metering::tau::SessionVolume;
use relaymesh_protocol::settlement::duty::{
    app_reveals, ClaimSeen, SupplierDuty, SupplierSession, CLAIM_DELAY_MS,
};
use relaymesh_protocol::settlement::proof::{sign_reveal, MinedReceipts, MinedSession};
use relaymesh_protocol::sumtree::store::LeafEntry;
use relaymesh_protocol::sumtree::store::MemoryStore;
use relaymesh_protocol::sumtree::tree::SumTree;
use relaymesh_protocol::wire::{Signature, WireMessage};
use relaymesh_protocol::{Digest, SignatureVerifier, Signer};

use crate::keys::digest_of;
use crate::metrics::GossipKind;
use crate::sim::{AppKind, Ev, Id, Sim, SupplierKind, MS, SEC};

/// One session between an app and a supplier, both sides of it.
pub(crate) struct Session {
    pub app: u32,
    pub supplier: u32,
    pub open: SignedSessionOpen,
    pub key: Digest,
    /// The app's secret `r`.
    pub secret: Digest,
    /// The supplier's mining secret `s` (committed in the countersigned terms).
    pub mining_secret: Digest,
    pub tau: u64,
    pub end_us: u64,
    pub closed: bool,
    /// When the supplier closed it to claim (ms), once it has.
    pub closed_ms: Option<u64>,
    /// The receipts τ selected, as `MinedSession::offer` would insert them, stored
    /// compactly: a session holds them for up to the session's length, and they are
    /// most of the model's memory. The tree is built from their leaves in one pass at
    /// the claim (`SumTree::build` gives the root of inserting them one by one, and
    /// refuses a relay hash mined twice, which the model never offers: each ack is
    /// offered once); a receipt is made whole only when a proof shows it
    /// ([`ClaimedReceipts`]).
    pub mined_acks: Vec<MinedAck>,
    /// The requests the mined acks answer, each once, with their hashes.
    pub requests: Vec<(Digest, SignedRelayRequest)>,
    /// The session's sum tree, from its claim on.
    pub mined: Option<MinedSession<MemoryStore, ClaimedReceipts>>,
    pub volume: SessionVolume,
    /// CUs of every receipt (what was really served and acked).
    pub served_cu: u64,
    /// Variance of the mined estimate: Σ w(τ − w) over receipts lighter than τ.
    pub var: f64,
    /// CUs of forged or fake leaves in the claim.
    pub fake_cu: u64,
    /// Boxed, as most sessions spend most of their life without them.
    pub claim: Option<Box<SignedClaim>>,
    pub reveal: Option<Box<SignedReveal>>,
    pub proof_sent: bool,
    /// Acks reserved by the streams started in this session: a bound on its leaves.
    pub reserved: u64,
}

/// A mined receipt as a session keeps it until its claim: its leaf's key and weight
/// (the leaf's value, the receipt digest, is the key), and the ack without what every
/// ack of the session or of the request repeats (the session key, the request's hash,
/// the request itself), which [`MinedAck::receipt`] puts back.
pub(crate) struct MinedAck {
    relay_hash: Digest,
    /// What it pays.
    weight: u64,
    /// Index into the session's requests.
    request: u32,
    version: u16,
    index: u16,
    prev_bytes: u32,
    new_bytes: u32,
    tokens: u16,
    last: bool,
    stream_digest: Digest,
    chain_secret: Digest,
    signature: Signature,
}

impl MinedAck {
    fn leaf(&self) -> LeafEntry {
        LeafEntry {
            key: self.relay_hash,
            value: self.relay_hash,
            weight: self.weight,
        }
    }

    /// The whole receipt.
    fn receipt(&self, session_key: Digest, requests: &[(Digest, SignedRelayRequest)]) -> Receipt {
        let (hash, request) = &requests[self.request as usize];
        Receipt {
            request: request.clone(),
            ack: Signed {
                body: Ack {
                    version: self.version,
                    session_key,
                    request: *hash,
                    index: self.index,
                    prev_bytes: self.prev_bytes,
                    new_bytes: self.new_bytes,
                    tokens: self.tokens,
                    stream_digest: self.stream_digest,
                    chain_secret: self.chain_secret,
                    last: self.last,
                },
                signature: self.signature,
            },
        }
    }
}

/// A claimed session's mined receipts, as the supplier answers a proof from them: kept
/// compact by relay hash, each made whole only when a proof shows it.
pub(crate) struct ClaimedReceipts {
    session_key: Digest,
    requests: Vec<(Digest, SignedRelayRequest)>,
    /// Sorted by relay hash.
    acks: Vec<MinedAck>,
}

impl MinedReceipts for ClaimedReceipts {
    fn receipt(&self, relay: &Digest) -> Option<Receipt> {
        let at = self
            .acks
            .binary_search_by_key(relay, |ack| ack.relay_hash)
            .ok()?;
        Some(self.acks[at].receipt(self.session_key, &self.requests))
    }

    fn all(&self) -> Vec<Receipt> {
        self.acks
            .iter()
            .map(|ack| ack.receipt(self.session_key, &self.requests))
            .collect()
    }
}

impl Session {
    /// What `MinedSession::offer` does with a checked receipt of the session's last
    /// request: if τ selects it, a leaf paying its mined value. Returns that value.
    fn mine(&mut self, receipt: &Receipt, facts: &ReceiptFacts) -> Option<u64> {
        if !facts.is_mined(&self.mining_secret, self.tau) {
            return None;
        }
        let paid = facts.mined_value(self.tau);
        debug_assert_eq!(
            facts.digest, facts.relay_hash,
            "the leaf's value is its key"
        );
        let ack = &receipt.ack;
        debug_assert_eq!(ack.body.session_key, self.key);
        if self.requests.last().map(|(hash, _)| *hash) != Some(ack.body.request) {
            self.requests
                .push((ack.body.request, receipt.request.clone()));
        }
        self.mined_acks.push(MinedAck {
            relay_hash: facts.relay_hash,
            weight: paid,
            request: (self.requests.len() - 1) as u32,
            version: ack.body.version,
            index: ack.body.index,
            prev_bytes: ack.body.prev_bytes,
            new_bytes: ack.body.new_bytes,
            tokens: ack.body.tokens,
            last: ack.body.last,
            stream_digest: ack.body.stream_digest,
            chain_secret: ack.body.chain_secret,
            signature: ack.signature,
        });
        Some(paid)
    }
}

/// What `message` costs on the wire (nothing if it is too large to send).
fn ledger_bytes(message: &LedgerMessage) -> usize {
    let len = relaymesh_protocol::wire::canonical_len(message);
    if len > LedgerMessage::MAX_SIZE {
        0
    } else {
        len
    }
}

impl Sim {
    /// The open session between supplier `s` and `app`, or a new one; whether it is new.
    /// A session that could not hold another `tokens` of receipts is closed first.
    pub(crate) fn session_for(&mut self, s: u32, app: u32, tokens: u32) -> (Id, bool) {
        let acks = u64::from(tokens.div_ceil(self.sc.mesh.ack_every_tokens).max(1));
        if let Some(&x) = self.suppliers[s as usize].open.get(&app) {
            let sess = self.sessions.get_mut(x).expect("open session");
            // Streams of one session run side by side: each reserves its acks (at most
            // one leaf each) when it starts, so the claim never exceeds the leaf limit.
            if sess.end_us > self.now
                && sess.reserved + acks <= u64::from(self.params.max_claim_leaves)
            {
                sess.reserved += acks;
                return (x, false);
            }
            self.suppliers[s as usize].open.remove(&app);
            if sess.end_us > self.now {
                sess.end_us = self.now;
                let at = self.now + CLAIM_DELAY_MS * MS;
                self.schedule(at, Ev::Close(x));
            }
        }
        self.counter += 1;
        let nonce = self.counter;
        let secret = digest_of("secret", &[self.sc.seed, nonce]);
        let mining_secret = digest_of("mining", &[self.sc.seed, nonce]);
        let amount = self.escrow_per_session;
        let app_state = &mut self.apps[app as usize];
        let escrow = CreditSlot::new(app_state.next_slot, amount);
        app_state.next_slot += amount;
        let tau = self.suppliers[s as usize].tau.tau();
        let open = self.countersigned(app, s, escrow, nonce, &secret, &mining_secret);
        self.verifier
            .verify_batch(&open.signed_items())
            .expect("both sides sign their own session");
        let end_us = self.now + self.params.max_session_ms * MS;
        let x = self.sessions.insert(Session {
            app,
            supplier: s,
            key: open.session_key(),
            open,
            secret,
            mining_secret,
            tau,
            end_us,
            closed: false,
            closed_ms: None,
            mined_acks: Vec::new(),
            requests: Vec::new(),
            mined: None,
            volume: SessionVolume::new(tau),
            served_cu: 0,
            var: 0.0,
            fake_cu: 0,
            claim: None,
            reveal: None,
            proof_sent: false,
            reserved: acks,
        });
        self.suppliers[s as usize].open.insert(app, x);
        if self.apps[app as usize].kind == AppKind::SelfDeal {
            self.self_deal(app);
        }
        self.m.sessions += 1;
        self.m.tau_sum += tau as f64;
        self.schedule(end_us + CLAIM_DELAY_MS * MS, Ev::Close(x));
        (x, true)
    }

    /// Terms `app` proposes to supplier `s` now (at the supplier's τ), countersigned.
    pub(crate) fn countersigned(
        &self,
        app: u32,
        s: u32,
        escrow: CreditSlot,
        nonce: u64,
        secret: &Digest,
        mining_secret: &Digest,
    ) -> SignedSessionOpen {
        let sup = &self.suppliers[s as usize];
        let body = SessionOpen {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: self.params.mesh_id(),
            app: self.apps[app as usize].key.public_key(),
            supplier: sup.key.public_key(),
            model_digest: digest_of("model", &[u64::from(sup.model)]),
            manifest: None,
            cu: Default::default(),
            price_per_cu: self.sc.mesh.price_per_cu,
            tau: sup.tau.tau(),
            max_token_bytes: self.sc.load.max_token_bytes,
            escrow,
            start_ms: self.now / MS,
            max_duration_ms: self.params.max_session_ms,
            reveal_commitment: commitment(secret),
            nonce,
        };
        Signed::sign(body, &self.apps[app as usize].key).countersign(&sup.key, mining_secret)
    }

    /// The app acks `tokens` of an attempt's stream, increment by increment; the
    /// supplier checks and verifies every receipt and mines those τ selects.
    pub(crate) fn meter_attempt(&mut self, a: Id, tokens: u32) {
        let Some(at) = self.attempts.get(a) else {
            return;
        };
        let (Some(x), r, s) = (at.session, at.request, at.supplier) else {
            return;
        };
        let Some(req) = self.requests.get(r) else {
            return;
        };
        if tokens == 0 {
            return;
        }
        let bpt = self.sc.load.bytes_per_token;
        let cap = self.sc.load.max_token_bytes;
        let k = self.sc.mesh.ack_every_tokens;
        let app = req.app;
        let prompt_bytes = (req.prompt_tokens + req.delivered) * bpt;
        let request_digest = digest_of("prompt", &[req.id]);
        let kind = self.suppliers[s as usize].kind;
        // A padding supplier sends every token at the cap: the app accepts it.
        let sent_bpt = if kind == SupplierKind::PadBytes {
            cap
        } else {
            bpt
        };
        let fake_fraction = self.sc.adversaries.fake_fraction;
        self.counter += 1;
        let request_id = self.counter;
        let Some(sess) = self.sessions.get_mut(x) else {
            return;
        };
        let app_key = &self.apps[app as usize].key;
        let app_public = app_key.public_key();
        let acks = tokens.div_ceil(k);
        let terms = RequestTerms {
            session_key: sess.key,
            request_id,
            prompt_digest: request_digest,
            prompt_bytes,
            max_output_bytes: self.sc.load.max_output_tokens * cap,
            max_acks: acks.min(u32::from(MAX_ACK_CHAIN)) as u16,
        };
        let chain_seed = digest_of("chain", &[self.sc.seed, request_id]);
        let mut acker = RequestAcker::new(terms, chain_seed, app_key);
        let item = acker.request().signed_item(app_public);
        self.verifier
            .verify(&item.key, &item.message, &item.signature)
            .expect("the app signs its requests");
        let mut previous = acker.request().body.ack_chain_head;
        let request = EncodedRequest::new(acker.request());
        let mut served = 0;
        let mut var = 0.0;
        for i in 0..acks.min(u32::from(MAX_ACK_CHAIN)) {
            let step = k.min(tokens - i * k);
            let bytes = (step * sent_bpt) as usize;
            let last = i + 1 == acks;
            let ack = acker
                .ack(&self.text[..bytes], step as u16, last, app_key)
                .expect("within the request's bounds");
            let receipt = acker.receipt(ack);
            let (facts, item) = receipt
                .check_next_signed(&request, &sess.key, &sess.open.body, &previous, app_public)
                .expect("an honest app's receipts check");
            self.verifier
                .verify(&item.key, &item.message, &item.signature)
                .expect("the app signs its acks");
            previous = receipt.ack.body.chain_secret;
            self.m.receipts += 1;
            served += facts.weight;
            sess.volume.record(facts.weight);
            if facts.weight < sess.tau {
                let v = (facts.weight * (sess.tau - facts.weight)) as f64;
                sess.var += v;
                var += v;
            }
            if sess.closed {
                // Past the supplier's close: served, never claimed.
                continue;
            }
            if kind == SupplierKind::Inflate && self.rng.chance(fake_fraction) {
                // One increment more than the app acked: the ack no longer matches its
                // signature, which only a proof that samples it will check.
                let mut forged = receipt.clone();
                forged.ack.body.new_bytes += k * bpt;
                if let Ok(f) = forged.check(&sess.key, &sess.open.body) {
                    if let Some(paid) = sess.mine(&forged, &f) {
                        self.m.mined += 1;
                        sess.fake_cu += paid;
                        continue;
                    }
                }
            }
            if sess.mine(&receipt, &facts).is_some() {
                self.m.mined += 1;
            }
        }
        let closed = sess.closed;
        if !closed {
            sess.served_cu += served;
        }
        self.m.served_cu += u128::from(served);
        self.suppliers[s as usize].served_cu += served;
        if !closed {
            // What an honest supplier would have billed for the same tokens.
            let metered = tokens.min(acks.min(u32::from(MAX_ACK_CHAIN)) * k);
            let cu = CuFormula::default();
            let honest_cu =
                cu.prompt_units(prompt_bytes) + crate::attacks::output_units(&cu, metered, bpt);
            self.metered(app, s, served, var, honest_cu);
        }
    }

    /// The supplier's duties for session `x` at this moment, as the node's: what the
    /// protocol's rules say is due, given what its ledger says of the claim.
    fn duty(&self, x: Id, claim: ClaimSeen) -> Option<SupplierDuty> {
        let sess = self.sessions.get(x)?;
        let state = SupplierSession {
            end_ms: sess.end_us / MS,
            epoch: sess.open.epoch(&self.params),
            closed_ms: sess.closed_ms,
        };
        Some(state.duty(
            &self.params,
            claim,
            self.ledger.frozen_before(),
            self.now / MS,
        ))
    }

    /// A session's end: the supplier claims what it mined (cheaters add to it).
    pub(crate) fn close(&mut self, x: Id) {
        let Some(sess) = self.sessions.get(x) else {
            return;
        };
        if sess.closed {
            return;
        }
        let (s, app) = (sess.supplier, sess.app);
        match self.duty(x, ClaimSeen::Absent) {
            Some(SupplierDuty::Close) => {}
            Some(SupplierDuty::Wait { until_ms: Some(at) }) => {
                self.schedule(at * MS, Ev::Close(x));
                return;
            }
            // Its epoch is final: nothing can be claimed for it any more.
            _ => {
                self.m.claims_late += 1;
                self.sessions.remove(x);
                return;
            }
        }
        if !self.suppliers[s as usize].online {
            self.suppliers[s as usize].duties.push(Ev::Close(x));
            return;
        }
        let sup = &mut self.suppliers[s as usize];
        if sup.open.get(&app) == Some(&x) {
            sup.open.remove(&app);
        }
        let kind = sup.kind;
        let sess = self.sessions.get_mut(x).expect("present");
        sess.closed = true;
        sess.closed_ms = Some(self.now / MS);
        self.suppliers[s as usize].tau.observe(&sess.volume);
        if sess.mined_acks.is_empty() {
            // Nothing mined: the session settles at zero, which the estimate counts
            // (leaving it out would bias the measured error upward at large τ).
            let sess = self.sessions.remove(x).expect("present");
            let sup = &mut self.suppliers[s as usize];
            if sup.kind == SupplierKind::Honest {
                sup.settled_served_cu += sess.served_cu;
                sup.settled_var += sess.var;
            }
            return;
        }
        let mut acks = std::mem::take(&mut sess.mined_acks);
        let mut leaves: Vec<LeafEntry> = acks.iter().map(MinedAck::leaf).collect();
        if kind == SupplierKind::FakeLeaves {
            self.add_fake_leaves(x, &mut leaves);
        }
        let sess = self.sessions.get_mut(x).expect("present");
        acks.sort_unstable_by_key(|ack| ack.relay_hash);
        let receipts = ClaimedReceipts {
            session_key: sess.key,
            requests: std::mem::take(&mut sess.requests),
            acks,
        };
        let tree = SumTree::build(MemoryStore::for_leaves(leaves.len()), leaves)
            .expect("distinct relay hashes");
        let mined = MinedSession::with_parts(tree, receipts, sess.mining_secret);
        let root = mined.root().expect("memory store");
        sess.mined = Some(mined);
        let sup_key = &self.suppliers[s as usize].key;
        let claim = Signed::sign(
            Claim {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                open: sess.open.clone(),
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            sup_key,
        );
        let honest = kind == SupplierKind::Honest;
        let samples = i32::from(self.params.proof_samples);
        if sess.fake_cu > 0 {
            self.m.cheating_claims += 1;
            let share = sess.fake_cu as f64 / root.sum as f64;
            self.m.expected_detection_sum += 1.0 - (1.0 - share).powi(samples);
        }
        let tau = sess.tau;
        self.publish_ledger(GossipKind::Claim, LedgerBody::Claim(claim.clone()));
        match self.ledger.apply_claim(claim.clone(), &self.verifier) {
            Ok(_) => {
                self.m.claims += 1;
                let price = claim.body.open.body.price_per_cu;
                self.watch_claim(x, claim.id(), claim.body.sum, price);
            }
            Err(LedgerError::Frozen { .. }) => {
                // The supplier was away past the freeze horizon: earnings lost, no verdict.
                self.m.claims_late += 1;
                self.sessions.remove(x);
                return;
            }
            Err(_) => {
                self.m.claims_refused += 1;
                if honest {
                    self.m.honest_claims_refused += 1;
                }
                self.sessions.remove(x);
                return;
            }
        }
        if kind == SupplierKind::Equivocate {
            // A second, different claim for the same session: the ledger turns the pair
            // into evidence and excludes the supplier.
            let rival = Signed::sign(
                Claim {
                    version: relaymesh_protocol::PROTOCOL_VERSION,
                    open: claim.body.open.clone(),
                    root: digest_of("rival", &[x]),
                    sum: claim.body.sum + tau,
                    count: claim.body.count + 1,
                },
                &self.suppliers[s as usize].key,
            );
            self.publish_ledger(GossipKind::Claim, LedgerBody::Claim(rival.clone()));
            if let Ok(Applied::Equivocation(evidence)) =
                self.ledger.apply_claim(rival, &self.verifier)
            {
                self.m.equivocations += 1;
                self.publish_ledger(GossipKind::Evidence, LedgerBody::Evidence(*evidence));
                let sup = &mut self.suppliers[s as usize];
                sup.excluded_us.get_or_insert(self.now);
            }
        }
        let sess = self.sessions.get_mut(x).expect("present");
        sess.claim = Some(Box::new(claim));
        // The app sees the claim once it has spread, and reveals (if it ever does).
        let app_kind = self.apps[app as usize].kind;
        if app_kind == AppKind::Honest {
            let mut at = self.now + self.spread.typical_us;
            if self.rng.chance(self.sc.churn.app_offline) {
                at += (self.rng.lognormal(self.sc.churn.app_downtime_s) * SEC as f64) as u64;
            }
            self.schedule(at, Ev::Reveal(x));
        }
        self.full_reveal_due(x);
    }

    /// Schedules the full reveal for when the protocol's rules say no reveal came in
    /// time.
    fn full_reveal_due(&mut self, x: Id) {
        let pending = ClaimSeen::Pending { revealed: false };
        if let Some(SupplierDuty::Wait { until_ms: Some(at) }) = self.duty(x, pending) {
            self.schedule(at * MS, Ev::FullReveal(x));
        }
    }

    /// A fake-leaf cheater's tree: its mined leaves plus leaves with no receipt behind
    /// them, worth `fake_fraction` of the claimed sum.
    fn add_fake_leaves(&mut self, x: Id, leaves: &mut Vec<LeafEntry>) {
        let f = self.sc.adversaries.fake_fraction;
        let max_leaves = u64::from(self.params.max_claim_leaves);
        let sess = self.sessions.get_mut(x).expect("present");
        let sum: u64 = leaves.iter().map(|l| l.weight).sum();
        let tau = sess.tau;
        let wanted = (sum as f64 * f / (1.0 - f) / tau as f64).ceil() as u64;
        let fakes = wanted.min(max_leaves.saturating_sub(leaves.len() as u64));
        for j in 0..fakes {
            leaves.push(LeafEntry {
                key: digest_of("fake-key", &[x, j]),
                value: digest_of("fake-value", &[x, j]),
                weight: tau,
            });
        }
        sess.fake_cu += fakes * tau;
    }

    /// Gossips `body`, counting its bytes, and hands it back.
    pub(crate) fn publish_ledger(&mut self, kind: GossipKind, body: LedgerBody) -> LedgerBody {
        let message = LedgerMessage::new(body);
        let bytes = ledger_bytes(&message);
        self.record_gossip(kind, bytes);
        if kind == GossipKind::Claim {
            let delay = self.spread.delay(&mut self.rng, bytes);
            self.m.convergence_ms.push(delay as f64 / MS as f64);
        }
        message.body
    }

    /// The app reveals its secret for the claimed root.
    pub(crate) fn reveal(&mut self, x: Id) {
        let Some(sess) = self.sessions.get_mut(x) else {
            return;
        };
        let Some(claim) = &sess.claim else {
            return;
        };
        let revealed_root = sess.reveal.as_ref().map(|r| r.body.root);
        if !app_reveals(!sess.proof_sent, claim.body.root, revealed_root) {
            return;
        }
        let reveal = sign_reveal(
            sess.key,
            claim.body.root,
            sess.secret,
            &self.apps[sess.app as usize].key,
        );
        sess.reveal = Some(Box::new(reveal.clone()));
        self.publish_ledger(GossipKind::Reveal, LedgerBody::Reveal(reveal));
        let at = self.now + self.spread.typical_us;
        self.schedule(at, Ev::Prove(x));
    }

    /// The supplier proves its claim: sampled after a reveal, or with every receipt.
    pub(crate) fn prove(&mut self, x: Id, full: bool) {
        let Some(sess) = self.sessions.get(x) else {
            return;
        };
        if sess.proof_sent || (!full && sess.reveal.is_none()) {
            return;
        }
        // The reveal reaches the supplier with this event (`full`: it has not yet).
        match self.duty(x, ClaimSeen::Pending { revealed: !full }) {
            Some(SupplierDuty::ProveFull | SupplierDuty::ProveSampled) => {}
            Some(SupplierDuty::Wait { .. }) => return self.full_reveal_due(x),
            _ => return,
        }
        let s = sess.supplier;
        if !self.suppliers[s as usize].online {
            let ev = if full {
                Ev::FullReveal(x)
            } else {
                Ev::Prove(x)
            };
            self.suppliers[s as usize].duties.push(ev);
            return;
        }
        let sess = self.sessions.get_mut(x).expect("present");
        sess.proof_sent = true;
        let claim = sess.claim.as_ref().expect("claimed");
        let id = claim.id();
        let mined = sess.mined.as_ref().expect("built at the claim");
        let proof = if full {
            mined.full_reveal(id).ok()
        } else {
            let reveal = sess.reveal.clone().expect("revealed");
            // A fake leaf has no receipt: a cheater sampled there cannot answer.
            mined
                .sampled_proof(id, *reveal, self.params.proof_samples)
                .ok()
        };
        let Some(proof) = proof else {
            return;
        };
        if full {
            self.m.full_reveals += 1;
        }
        let LedgerBody::Proof(proof) =
            self.publish_ledger(GossipKind::Proof, LedgerBody::Proof(proof))
        else {
            unreachable!("handed back as given")
        };
        let kind = self.suppliers[s as usize].kind;
        match self.ledger.apply_proof(&proof, &self.verifier) {
            Ok(Applied::Settled) => self.settled(x),
            Ok(_) => {
                // Void (an excluded supplier) or a duplicate: no credit.
                self.sessions.remove(x);
            }
            Err(LedgerError::Frozen { .. } | LedgerError::UnknownClaim(_)) => {
                // Its claim's epoch froze (and was dropped) before the proof came.
                self.m.claims_late += 1;
                self.sessions.remove(x);
            }
            Err(_) => {
                self.m.proofs_refused += 1;
                if kind == SupplierKind::Honest {
                    self.m.honest_claims_refused += 1;
                }
            }
        }
    }

    fn settled(&mut self, x: Id) {
        let sess = self.sessions.remove(x).expect("present");
        let claim = sess.claim.as_ref().expect("claimed");
        let sup = &mut self.suppliers[sess.supplier as usize];
        self.m.claims_settled += 1;
        self.m
            .settle_ms
            .push(self.now.saturating_sub(sess.end_us) as f64 / MS as f64);
        sup.credited_cu += claim.body.sum;
        if sup.kind == SupplierKind::Honest {
            sup.settled_served_cu += sess.served_cu;
            sup.settled_var += sess.var;
        }
    }

    /// Settlement figures once the run is over.
    pub(crate) fn finish_settlement(&mut self) {
        for (_, sess) in self.sessions.iter() {
            let Some(claim) = &sess.claim else {
                continue;
            };
            let kind = self.suppliers[sess.supplier as usize].kind;
            if sess.fake_cu > 0 {
                self.m.cheating_detected += 1;
            } else if kind == SupplierKind::Honest
                && self.ledger.claim_status(&claim.id()) != Some(ClaimStatus::Settled)
            {
                self.m.honest_claims_unsettled += 1;
            }
        }
        let (mut served, mut credited, mut abs, mut expected) = (0.0, 0.0, 0.0, 0.0);
        let mut max_z: f64 = 0.0;
        for sup in &self.suppliers {
            if sup.kind != SupplierKind::Honest || sup.settled_served_cu == 0 {
                continue;
            }
            let (s, c) = (sup.settled_served_cu as f64, sup.credited_cu as f64);
            served += s;
            credited += c;
            abs += (c - s).abs();
            let sd = sup.settled_var.sqrt();
            expected += sd * (2.0 / std::f64::consts::PI).sqrt();
            if sd > 0.0 {
                max_z = max_z.max((c - s).abs() / sd);
            } else if c != s {
                max_z = f64::INFINITY;
            }
        }
        self.m.honest_excluded = self
            .suppliers
            .iter()
            .filter(|s| {
                s.kind == SupplierKind::Honest && self.ledger.is_excluded(&s.key.public_key())
            })
            .count() as u64;
        if served > 0.0 {
            self.m.metering_error = abs / served;
            self.m.metering_bias = credited / served - 1.0;
            self.m.expected_error = expected / served;
        }
        self.m.metering_max_z = max_z;
        let accounts = self.ledger.accounts();
        let earned: u128 = accounts.values().map(|a| a.earned).sum();
        let spent: u128 = accounts.values().map(|a| a.spent).sum();
        self.m.credits_minus_debits = earned as i128 - spent as i128;
    }
}
