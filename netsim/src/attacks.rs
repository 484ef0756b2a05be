//! The economic adversaries: attacks whose point is credit, measured as what the
//! attacker gains per unit it spends (`docs/SIMULATION.md`, "Economic attacks").
//!
//! - A **self-dealing** app opens, beside each session an honest supplier serves it, a
//!   session of its own with a supplier key it holds, in the same epoch, and settles it
//!   through the ledger: on a pro-rata ledger its huge claim would dilute the honest
//!   one; here every claim is paid from its own session's escrow.
//! - An **ack-picking** app withholds the ack it guesses would be mined. It cannot know
//!   (the lottery needs the supplier's secret `s`), so its guess is a coin with the
//!   mining odds; withholding an ack ends the stream after the window.
//! - A **byte-padding** supplier sends every token at the session's `max_token_bytes`,
//!   the most the app accepts.
//! - A **double-committing** app gives one escrow slot to sessions at several honest
//!   suppliers at the same moment, with one request each, before any announcement has
//!   spread (the double-commit race). Every session's terms are signed, countersigned
//!   and announced to the ledger for real; the ledger excludes the app, so none is
//!   paid. What each supplier serves first is modelled (the stream does not take a
//!   slot): with the clash wait, the first window (a stranger's, one ack step, where
//!   suppliers keep stranger windows); without, the whole answer. Its
//!   cost is the line it forfeits, at least the smallest escrow a supplier admits.
//!
//! For an app, spent is what the ledger paid honest suppliers for its sessions and
//! gain is the acknowledged service it took beyond that (what it took past its last
//! ack is the free ride, counted apart: it is the same for every app that stops
//! acking); for a supplier, spent is the honest value of what it served and gain is
//! what it was paid beyond that. Payments are read from the ledger (the protocol
//! crate's fold) before each epoch freezes.

use std::collections::BTreeMap;

use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::messages::claim::Claim;
use relaymesh_protocol::messages::credit::CreditSlot;
use relaymesh_protocol::messages::ledger::LedgerBody;
use relaymesh_protocol::messages::reveal::commitment;
use relaymesh_protocol::messages::session::SessionOpen;
use relaymesh_protocol::metering::app::{RequestAcker, RequestTerms};
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::receipt::EncodedRequest;
use relaymesh_protocol::settlement::proof::{sign_reveal, MinedSession};
use relaymesh_protocol::{Digest, Signer};

use crate::keys::{digest_of, SimKey};
use crate::metrics::{GossipKind, Metrics};
use crate::sim::{AppKind, Id, Sim, SupplierKind, MS};

/// Increments in a self-dealt session's one request, each padded to the byte cap.
const SELF_DEALT_ACKS: u16 = 32;

/// The attacks measured, in the order of [`Attacks`]' arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attack {
    SelfDeal,
    AckPick,
    PadBytes,
}

impl Attack {
    const ALL: [Attack; 3] = [Attack::SelfDeal, Attack::AckPick, Attack::PadBytes];

    /// The attack an app of `app` kind served by a supplier of `supplier` kind runs, if
    /// any: apps attack honest suppliers, padding suppliers attack every app.
    pub(crate) fn of(app: AppKind, supplier: SupplierKind) -> Option<Attack> {
        match (app, supplier) {
            (_, SupplierKind::PadBytes) => Some(Attack::PadBytes),
            (AppKind::SelfDeal, SupplierKind::Honest) => Some(Attack::SelfDeal),
            (AppKind::AckPick, SupplierKind::Honest) => Some(Attack::AckPick),
            _ => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the attacker is the supplier (it is paid) rather than the app (it pays).
    fn by_supplier(self) -> bool {
        self == Attack::PadBytes
    }
}

/// A claim whose payment is followed.
struct Watched {
    attack: Option<Attack>,
    /// `sum × price`, micro-credits.
    value: u128,
    paid: u128,
}

/// What the economic adversaries took and paid.
#[derive(Default)]
pub(crate) struct Attacks {
    watched: BTreeMap<Digest, Watched>,
    /// Per attack, CUs: apps, what honest suppliers delivered to them and they acked;
    /// suppliers, the CUs an honest supplier would have billed for the same work.
    taken_cu: [u128; 3],
    /// Per attack, CUs honest suppliers delivered past the app's last ack.
    free_cu: [u128; 3],
    /// Per attack: the variance of the mined estimate of its sessions' claims, CU².
    var: [f64; 3],
    /// CUs honest suppliers delivered, acked or not.
    honest_delivered_cu: u128,
    /// Self-dealt sessions opened, and their claims settled.
    self_dealt: u64,
    self_dealt_settled: u64,
    /// Double-commit bursts, the sessions they opened, the CUs honest suppliers served
    /// in them, and the least credit the attackers forfeited (micro-credits).
    double_bursts: u64,
    double_sessions: u64,
    double_taken_cu: u128,
    double_forfeited: u128,
}

impl Sim {
    /// Where an ack-picking app stops acking a stream of `remaining` tokens after a
    /// prompt of `prompt` tokens in `session`: before the first ack its guess marks as
    /// mined. Its guess is a coin with the odds the lottery gives that ack (what it can
    /// compute without `s`), drawn from the request's own hash so the run's other draws
    /// stay as they are. `None`: it acks the whole stream.
    pub(crate) fn ack_pick_stop(
        &mut self,
        kind: AppKind,
        session: Id,
        r: Id,
        prompt: u32,
        remaining: u32,
    ) -> Option<u32> {
        if kind != AppKind::AckPick {
            return None;
        }
        let tau = self.sessions.get(session)?.tau.max(1);
        let req = self.requests.get(r)?;
        let k = self.sc.mesh.ack_every_tokens;
        let cu = CuFormula::default();
        let bpt = self.sc.load.bytes_per_token;
        for i in 0..remaining.div_ceil(k) {
            let tokens = k.min(remaining - i * k);
            let mut weight = output_units(&cu, tokens, bpt);
            if i == 0 {
                weight += cu.prompt_units(prompt * bpt);
            }
            let odds = (weight as f64 / tau as f64).min(1.0);
            let coin = digest_of("ack-pick", &[req.id, u64::from(req.attempts), u64::from(i)]);
            let u = u64::from_be_bytes(coin.0[..8].try_into().expect("8 bytes"));
            if (u as f64 / u64::MAX as f64) < odds {
                return Some(i * k);
            }
        }
        None
    }

    /// Counts the CUs of a metered stretch of a stream (`served`: its receipts' weight;
    /// `var`: the variance of their mined estimate) towards the attack it is part of;
    /// `honest_cu` is what an honest supplier would have billed for it.
    pub(crate) fn metered(&mut self, app: u32, s: u32, served: u64, var: f64, honest_cu: u64) {
        let supplier = self.suppliers[s as usize].kind;
        if supplier == SupplierKind::Honest {
            self.attacks.honest_delivered_cu += u128::from(served);
        }
        let Some(attack) = Attack::of(self.apps[app as usize].kind, supplier) else {
            return;
        };
        let taken = if attack.by_supplier() {
            honest_cu
        } else {
            served
        };
        self.attacks.taken_cu[attack.index()] += u128::from(taken);
        self.attacks.var[attack.index()] += var;
    }

    /// Tokens a stream delivered past its last ack, and the prompt tokens it prefilled
    /// if no ack came at all.
    pub(crate) fn took_unacked(&mut self, app: u32, s: u32, tokens: u32, prompt: u32) {
        let bpt = self.sc.load.bytes_per_token;
        let formula = CuFormula::default();
        let cu = output_units(&formula, tokens, bpt) + formula.prompt_units(prompt * bpt);
        let supplier = self.suppliers[s as usize].kind;
        if supplier == SupplierKind::Honest {
            self.attacks.honest_delivered_cu += u128::from(cu);
        }
        if let Some(attack) = Attack::of(self.apps[app as usize].kind, supplier) {
            self.attacks.free_cu[attack.index()] += u128::from(cu);
        }
    }

    /// Follows the payment of the claim of session `x`, if it is part of an attack.
    pub(crate) fn watch_claim(&mut self, x: Id, id: Digest, sum: u64, price: u64) {
        let Some(sess) = self.sessions.get(x) else {
            return;
        };
        let app = self.apps[sess.app as usize].kind;
        let supplier = self.suppliers[sess.supplier as usize].kind;
        let Some(attack) = Attack::of(app, supplier) else {
            return;
        };
        self.attacks.watched.insert(
            id,
            Watched {
                attack: Some(attack),
                value: u128::from(sum) * u128::from(price),
                paid: 0,
            },
        );
    }

    /// Reads what the ledger pays every followed claim; called before epochs freeze
    /// (a frozen claim's payment is final, and the ledger forgets the claim).
    pub(crate) fn record_payments(&mut self) {
        if self.attacks.watched.is_empty() {
            return;
        }
        for (claim, _, paid) in self.ledger.claims() {
            if let Some(w) = self.attacks.watched.get_mut(&claim.id) {
                w.paid = paid;
            }
        }
    }

    /// A self-dealing app's own session beside a new one with an honest supplier: same
    /// epoch, the next escrow slot, a supplier key of its own, one request acked in
    /// full at the byte cap, mined at the lowest τ, claimed, revealed and proven
    /// through the ledger at once.
    pub(crate) fn self_deal(&mut self, app: u32) {
        self.attacks.self_dealt += 1;
        let n = self.attacks.self_dealt;
        let colluder = SimKey::derive(self.sc.seed, u32::MAX - 1 - app, self.sc.signatures);
        let secret = digest_of("self-deal secret", &[self.sc.seed, n]);
        let mining_secret = digest_of("self-deal mining", &[self.sc.seed, n]);
        let amount = self.escrow_per_session;
        let app_state = &mut self.apps[app as usize];
        let escrow = CreditSlot::new(app_state.next_slot, amount);
        app_state.next_slot += amount;
        let app_key = self.apps[app as usize].key.clone();
        let cap = self.sc.load.max_token_bytes;
        let tau = self.params.tau_min;
        let open = Signed::sign(
            SessionOpen {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                mesh_id: self.params.mesh_id(),
                app: app_key.public_key(),
                supplier: colluder.public_key(),
                model_digest: digest_of("model", &[0]),
                manifest: None,
                cu: Default::default(),
                price_per_cu: self.sc.mesh.price_per_cu,
                tau,
                max_token_bytes: cap,
                escrow,
                start_ms: self.now / MS,
                max_duration_ms: self.params.max_session_ms,
                reveal_commitment: commitment(&secret),
                nonce: n,
            },
            &app_key,
        )
        .countersign(&colluder, &mining_secret);
        let key = open.session_key();
        let k = self.sc.mesh.ack_every_tokens;
        let terms = RequestTerms {
            session_key: key,
            request_id: n,
            prompt_digest: digest_of("self-deal prompt", &[n]),
            prompt_bytes: 0,
            max_output_bytes: u32::from(SELF_DEALT_ACKS) * k * cap,
            max_acks: SELF_DEALT_ACKS,
        };
        let mut acker = RequestAcker::new(terms, digest_of("self-deal chain", &[n]), &app_key);
        let request = EncodedRequest::new(acker.request());
        let mut previous = acker.request().body.ack_chain_head;
        let mut mined = MinedSession::new(mining_secret);
        let increment = vec![b'x'; (k * cap) as usize];
        for i in 0..SELF_DEALT_ACKS {
            let last = i + 1 == SELF_DEALT_ACKS;
            let ack = acker
                .ack(&increment, k as u16, last, &app_key)
                .expect("within the request's bounds");
            let receipt = acker.receipt(ack);
            let (facts, _) = receipt
                .check_next_signed(&request, &key, &open.body, &previous, app_key.public_key())
                .expect("its own receipts check");
            previous = receipt.ack.body.chain_secret;
            mined
                .offer(receipt, &facts, tau)
                .expect("distinct relay hashes");
        }
        let root = mined.root().expect("memory store");
        if root.count == 0 {
            return;
        }
        let claim = Signed::sign(
            Claim {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                open,
                root: root.hash,
                sum: root.sum,
                count: root.count,
            },
            &colluder,
        );
        let id = claim.id();
        self.publish_ledger(GossipKind::Claim, LedgerBody::Claim(claim.clone()));
        if self.ledger.apply_claim(claim, &self.verifier).is_err() {
            return;
        }
        let reveal = sign_reveal(key, root.hash, secret, &app_key);
        self.publish_ledger(GossipKind::Reveal, LedgerBody::Reveal(reveal.clone()));
        let proof = mined
            .sampled_proof(id, reveal, self.params.proof_samples)
            .expect("every leaf has its receipt");
        let LedgerBody::Proof(proof) =
            self.publish_ledger(GossipKind::Proof, LedgerBody::Proof(proof))
        else {
            unreachable!("handed back as given")
        };
        if self.ledger.apply_proof(&proof, &self.verifier).is_ok() {
            self.attacks.self_dealt_settled += 1;
            self.attacks.watched.insert(
                id,
                Watched {
                    attack: None,
                    value: u128::from(root.sum) * u128::from(self.sc.mesh.price_per_cu),
                    paid: 0,
                },
            );
        }
    }

    /// A double-committing app's burst: one escrow slot, one session at each of up to
    /// `double_commit_burst` usable honest suppliers of `model`, one request each. Once
    /// its ledger excludes the app, every supplier refuses it.
    pub(crate) fn double_commit(&mut self, app: u32, model: usize, prompt: u32, output: u32) {
        let key = self.apps[app as usize].key.public_key();
        if self.ledger.is_payer_excluded(&key) {
            self.m.refused_debt += 1;
            return;
        }
        let burst = self.sc.adversaries.double_commit_burst as usize;
        let targets: Vec<u32> = self.by_model[model]
            .iter()
            .copied()
            .filter(|&s| {
                let sup = &self.suppliers[s as usize];
                sup.kind == SupplierKind::Honest && sup.online && self.usable(app, s)
            })
            .take(burst)
            .collect();
        if targets.len() < 2 {
            return;
        }
        self.attacks.double_bursts += 1;
        let slot = CreditSlot::new(0, self.escrow_per_session);
        let bpt = self.sc.load.bytes_per_token;
        let formula = CuFormula::default();
        let mut least_escrow = u128::MAX;
        for s in targets {
            // A fresh key is a stranger everywhere: its first window is one ack step.
            let served = if self.sc.mesh.clash_wait {
                output.min(self.window(s, app).unwrap_or(0))
            } else {
                output
            };
            let cu = formula.prompt_units(prompt * bpt) + output_units(&formula, served, bpt);
            self.counter += 1;
            let n = self.counter;
            let secret = digest_of("double-commit secret", &[self.sc.seed, n]);
            let mining = digest_of("double-commit mining", &[self.sc.seed, n]);
            let open = self.countersigned(app, s, slot, n, &secret, &mining);
            least_escrow = least_escrow.min(
                u128::from(open.body.price_per_cu)
                    * u128::from(open.body.tau)
                    * u128::from(self.params.tau_target_mined),
            );
            // Each supplier countersigned before any rival announcement reached it; the
            // ledger refuses the announcements past the one that excludes the app.
            let _ = self.ledger.apply_open(&open, &self.verifier);
            self.attacks.double_sessions += 1;
            self.attacks.double_taken_cu += u128::from(cu);
            self.attacks.honest_delivered_cu += u128::from(cu);
        }
        if least_escrow != u128::MAX {
            self.attacks.double_forfeited += least_escrow;
        }
        debug_assert!(
            self.attacks.double_sessions < 2 || self.ledger.is_payer_excluded(&key),
            "two sessions on one slot exclude the app"
        );
    }

    /// The attack figures, once the run is over.
    pub(crate) fn finish_attacks(&mut self) {
        self.record_payments();
        let price = u128::from(self.sc.mesh.price_per_cu.max(1));
        let a = &self.attacks;
        let mut paid_cu = [0u128; 3];
        let m: &mut Metrics = &mut self.m;
        for w in a.watched.values() {
            match w.attack {
                Some(attack) => {
                    paid_cu[attack.index()] += w.paid / price;
                    if attack == Attack::SelfDeal && w.paid < w.value {
                        m.self_deal_underpaid_claims += 1;
                    }
                }
                None => m.self_dealt_paid_cu += (w.paid / price) as f64,
            }
        }
        m.self_dealt_settled = a.self_dealt_settled;
        let mut unpaid_by_apps = 0.0;
        for attack in Attack::ALL {
            let i = attack.index();
            let (taken, paid) = (a.taken_cu[i] as f64, paid_cu[i] as f64);
            let (gain, spent) = if attack.by_supplier() {
                (paid - taken, taken)
            } else {
                let free = a.free_cu[i] as f64;
                unpaid_by_apps += taken - paid + free;
                if taken + free > 0.0 {
                    m.attack_free_share[i] = free / (taken + free);
                }
                (taken - paid, paid)
            };
            if spent > 0.0 {
                m.attack_gain[i] = gain / spent;
                m.attack_noise[i] = a.var[i].sqrt() / spent;
            } else if taken > 0.0 {
                m.attack_gain[i] = f64::INFINITY;
            }
        }
        unpaid_by_apps += a.double_taken_cu as f64;
        if a.double_forfeited > 0 {
            let taken = (a.double_taken_cu * price) as f64;
            let forfeited = a.double_forfeited as f64;
            m.double_commit_gain = (taken - forfeited) / forfeited;
            m.double_commit_sessions = a.double_sessions as f64 / a.double_bursts.max(1) as f64;
        }
        if a.honest_delivered_cu > 0 {
            m.honest_loss_share = unpaid_by_apps / a.honest_delivered_cu as f64;
        }
    }
}

/// CUs of `tokens` tokens of `bpt` bytes each, as their receipts weigh them (every
/// increment the same mix, so the per-token cap applies to the whole alike).
pub(crate) fn output_units(formula: &CuFormula, tokens: u32, bpt: u32) -> u64 {
    let tokens = u16::try_from(tokens).unwrap_or(u16::MAX);
    formula
        .increment_units(0, u32::from(tokens) * bpt, tokens)
        .unwrap_or(0)
}
