//! What one app may take from a supplier, by key: streams at once, new sessions per
//! hour, and tokens it may leave unacknowledged.
//!
//! The last is the protocol crate's rule ([`relaymesh_protocol::metering::allowance`],
//! shared with the simulator): a stranger's stream gets one ack step (K) of window, and
//! a key may have at risk (left unacknowledged in the last [`DEBT_WINDOW`], plus its
//! open streams' windows) 2K tokens, or a sixteenth of what it acknowledged here. An
//! honest app waits one round trip per K tokens on its first answers at a supplier, and
//! runs more streams at once there as it pays (`docs/PROTOCOL.md` §16 states the
//! bound). Tokens a stream leaves unacknowledged because the supplier failed are not the
//! app's debt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use relaymesh_protocol::metering::allowance::{AppRisk, DEBT_WINDOW_MS};
use relaymesh_protocol::metering::flow::Window;
use relaymesh_protocol::PublicKey;

use super::claims::{Claims, SHARE_RETRY};

/// Streams one app may have open at one supplier.
pub const MAX_STREAMS_PER_APP: usize = 8;
/// New sessions one app may open at one supplier per hour.
pub const MAX_SESSIONS_PER_APP: usize = 64;
/// How long unacknowledged tokens count against their app, and how long an app's
/// acknowledged tokens are remembered after its last stream.
pub const DEBT_WINDOW: Duration = Duration::from_millis(DEBT_WINDOW_MS);
/// Most apps remembered; past it, apps with nothing open, owed or paid go first, and
/// while none can go a new key is refused.
pub const MAX_APPS: usize = 65_536;

/// Why a stream of an app was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// For people.
    pub why: String,
    /// When it is worth asking again.
    pub retry_after: Duration,
}

#[derive(Default)]
struct AppState {
    /// Its streams, debts and payments (the protocol's rule).
    risk: AppRisk,
    /// When each session was countersigned.
    sessions: VecDeque<Instant>,
}

impl AppState {
    fn prune(&mut self, now: Instant, now_ms: u64) {
        self.risk.prune(now_ms);
        while self
            .sessions
            .front()
            .is_some_and(|at| now.duration_since(*at) > Duration::from_secs(3600))
        {
            self.sessions.pop_front();
        }
    }
}

/// The limits of one supplier, over all its streams.
pub struct AppLimits {
    apps: Mutex<Apps>,
    /// The mesh's window, the most a stream gets.
    full: Window,
    /// Claims on the next free slot of each model (the fair-slot rule).
    claims: Claims,
    /// Streams one app may hold, and sessions it may open per hour.
    caps: (usize, usize),
    /// The origin of the milliseconds the allowance rule counts in.
    origin: Instant,
}

/// The apps remembered, and when a full table was last swept.
#[derive(Default)]
struct Apps {
    map: HashMap<PublicKey, AppState>,
    swept: Option<Instant>,
}

/// One stream of an app, counted until [`StreamTicket::end`] (or drop).
pub struct StreamTicket<'a> {
    limits: &'a AppLimits,
    app: PublicKey,
    model: String,
    window: Window,
    unacked: u32,
    acked: u32,
    /// When the claim it was let through on was made, if any.
    claimed: Option<Instant>,
    /// Whether its generation started (until then it waits for a slot).
    started: bool,
}

impl StreamTicket<'_> {
    /// Its generation started: it no longer waits for a slot.
    pub fn started(&mut self) {
        if !std::mem::replace(&mut self.started, true) {
            self.limits.claims.asking(&self.model, true);
        }
    }

    /// Its generation was refused for want of a slot (asked through `peer`): the app
    /// gets a claim on the next one, keeping its place if it was let through on one.
    /// Returns the retry to tell it, or `None` if no claim could be made.
    pub fn busy(&mut self, peer: PeerId) -> Option<Duration> {
        self.started();
        self.limits
            .claims
            .wait(&self.app, &self.model, peer, true, self.claimed.take())
    }

    /// The stream ends having paid `acked` tokens (those acknowledged, and its
    /// prompt's worth once paid) and owing `unacked` (`allowance::owed`; 0 where the
    /// supplier, not the app, ended it early).
    pub fn end(mut self, acked: u32, unacked: u32) {
        self.acked = acked;
        self.unacked = unacked;
    }

    /// The window this stream gets: the mesh's where the app's allowance here holds
    /// it, one ack step otherwise.
    pub fn window(&self) -> Window {
        self.window
    }
}

impl Drop for StreamTicket<'_> {
    fn drop(&mut self) {
        self.started();
        let now_ms = self.limits.clock_ms(Instant::now());
        let mut apps = self.limits.apps.lock().expect("limits lock");
        if let Some(state) = apps.map.get_mut(&self.app) {
            state.risk.close(self.window);
            state.risk.ended(self.acked, self.unacked, now_ms);
        }
    }
}

impl AppLimits {
    /// Limits for a mesh whose ack window is `full`.
    pub fn new(full: Window) -> Self {
        Self::with_caps(
            full,
            MAX_STREAMS_PER_APP,
            MAX_SESSIONS_PER_APP,
            Claims::default(),
        )
    }

    /// As [`Self::new`], with `streams_per_app` and `sessions_per_app` in place of the
    /// defaults, and `claims` sized for the node's connection limits.
    pub fn with_caps(
        full: Window,
        streams_per_app: usize,
        sessions_per_app: usize,
        claims: Claims,
    ) -> Self {
        Self {
            apps: Mutex::new(Apps::default()),
            full,
            claims,
            caps: (streams_per_app, sessions_per_app),
            origin: Instant::now(),
        }
    }

    /// Milliseconds from this table's origin to `at`, as the allowance rule counts time.
    fn clock_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on `app`'s state; `None` when the table is full of apps that cannot be
    /// forgotten (swept at most once a second, so a flood of new keys costs no more).
    fn with<T>(&self, app: &PublicKey, f: impl FnOnce(&mut AppState) -> T) -> Option<T> {
        let mut apps = self.apps.lock().expect("limits lock");
        let now = Instant::now();
        let now_ms = self.clock_ms(now);
        if apps.map.len() >= MAX_APPS && !apps.map.contains_key(app) {
            if apps
                .swept
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
            {
                return None;
            }
            apps.swept = Some(now);
            let full = self.full;
            apps.map.retain(|_, s| {
                s.prune(now, now_ms);
                !s.risk.forgettable(full)
            });
            if apps.map.len() >= MAX_APPS {
                return None;
            }
        }
        let state = apps.map.entry(*app).or_default();
        state.prune(now, now_ms);
        Some(f(state))
    }

    /// A new stream of `app` for `model`, asked through `peer` while `free_slots` of
    /// that model's slots are free, or why it is refused.
    ///
    /// Besides the limits above, a share (the claims of [`super::claims`]): while as
    /// many apps as there are free slots (at least one) hold a claim on `model` that
    /// comes before this app's, each holding no more streams here than this one, this
    /// one is refused, so the next free slot goes to the one waiting, first come first
    /// served (with ties let through, a rival holding nothing, or a spare key, took
    /// the slot before the waiter came back). An app refused so while no slot is free
    /// gets in line itself: two keys that keep claiming in turn hold no one off for
    /// ever. While a slot is free, no claim is made.
    pub fn begin(
        &self,
        app: &PublicKey,
        model: &str,
        peer: PeerId,
        free_slots: usize,
    ) -> Result<StreamTicket<'_>, Refused> {
        let (max_streams, full) = (self.caps.0, self.full);
        // The streams held here by each app whose claim comes before this one's.
        let ahead: Vec<usize> = {
            let before = self.claims.before(app, model);
            let apps = self.apps.lock().expect("limits lock");
            before
                .iter()
                .map(|k| apps.map.get(k).map_or(0, |s| s.risk.streams()))
                .collect()
        };
        let mut gave_way = false;
        let refused = |why: String, retry_after| Refused { why, retry_after };
        let window = self
            .with(app, |state| {
                let risk = &mut state.risk;
                let Some(window) = risk.window(full) else {
                    let retry = if risk.owes_too_much(full) {
                        DEBT_WINDOW / 10
                    } else {
                        SHARE_RETRY * 4
                    };
                    return Err(refused(format!(
                        "app {} has {} tokens at risk here ({} left unacknowledged in the last {} minutes, the rest in open streams' windows) and may have {}: ack what you take",
                        app.peer_id(),
                        risk.at_risk(),
                        risk.owed(),
                        DEBT_WINDOW.as_secs() / 60,
                        risk.allowance(full),
                    ), retry));
                };
                let streams = risk.streams();
                if streams >= max_streams {
                    return Err(refused(
                        format!("app {} has {max_streams} streams open here already", app.peer_id()),
                        SHARE_RETRY * 4,
                    ));
                }
                let holding_off = ahead.iter().filter(|n| **n <= streams).count();
                if holding_off >= free_slots.max(1) {
                    gave_way = true;
                    return Err(refused(format!(
                        "app {} holds {} stream(s) here while another app waits for a slot",
                        app.peer_id(),
                        streams
                    ), SHARE_RETRY));
                }
                risk.open(window);
                Ok(window)
            })
            .unwrap_or_else(|| Err(table_full()))
            .inspect_err(|_| {
                if gave_way {
                    self.claims.wait(app, model, peer, free_slots == 0, None);
                }
            })?;
        let claimed = self.claims.spend(app, model);
        self.claims.asking(model, false);
        Ok(StreamTicket {
            limits: self,
            app: *app,
            model: model.to_owned(),
            window,
            unacked: 0,
            acked: 0,
            claimed,
            started: false,
        })
    }

    /// Whether a stream of `model` that stops acking holds a place others want: none
    /// of its `free_slots` is free and someone waits for one.
    pub fn contended(&self, model: &str, free_slots: usize) -> bool {
        free_slots == 0 && self.claims.waited_for(model)
    }

    /// As a refusal for want of a slot would (tests).
    #[cfg(test)]
    fn waits(&self, app: &PublicKey, model: &str, peer: PeerId) {
        self.claims.wait(app, model, peer, true, None);
    }

    /// Counts a new session of `app`, or says why it is refused.
    pub fn new_session(&self, app: &PublicKey) -> Result<(), String> {
        let max_sessions = self.caps.1;
        self.with(app, |state| {
            if state.sessions.len() >= max_sessions {
                return Err(format!(
                    "app {} opened {max_sessions} sessions here in the last hour; resume one",
                    app.peer_id()
                ));
            }
            state.sessions.push_back(Instant::now());
            Ok(())
        })
        .unwrap_or_else(|| Err(table_full().why))
    }
}

/// The refusal of a new key while the table of apps is full.
fn table_full() -> Refused {
    Refused {
        why: format!("this supplier already tracks {MAX_APPS} apps with streams, debts or payments; try another"),
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use super::super::claims::{CLAIM_SLACK, MAX_WAITING_PER_PEER};
    use super::*;
    use relaymesh_protocol::metering::allowance::UNACKED_SHARE;

    const MODEL: &str = "smollm2";

    /// The peer every test app asks through.
    fn gateway() -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([1; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    const FULL: Window = Window {
        ack_every: 16,
        max_unacked: 64,
    };

    /// An app that has paid enough here that its allowance is not what limits it.
    fn paid_up(limits: &AppLimits, app: &PublicKey) {
        limits
            .begin(app, MODEL, gateway(), 1)
            .unwrap()
            .end(1_000_000, 0);
    }

    /// Hole 5: the window bounded what an app that never acks takes per stream, not per
    /// app, so it took `W` tokens from every stream it opened. Failed before suppliers
    /// kept per-app debts: every stream was served.
    #[test]
    fn an_app_that_leaves_tokens_unacknowledged_is_refused_until_it_stops() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        // A stranger's window is K = 16, and it may have twice that at risk.
        limits.begin(&app, MODEL, gateway(), 1).unwrap().end(0, 16);
        limits.begin(&app, MODEL, gateway(), 1).unwrap().end(0, 15);
        let refused = limits.begin(&app, MODEL, gateway(), 1).err().unwrap();
        assert!(refused.why.contains("at risk"), "{}", refused.why);
        assert_eq!(refused.retry_after, DEBT_WINDOW / 10);
        // Another app is not affected.
        assert!(limits
            .begin(&PublicKey([8; 32]), MODEL, gateway(), 1)
            .is_ok());
    }

    /// The free ride per stream was the whole window W for any key, and keys are free.
    /// A stranger now gets one ack step (K); the window W only fits once a sixteenth of
    /// what it paid here covers it. Failed before: every stream had the full window.
    #[test]
    fn a_stranger_gets_one_ack_step_until_it_has_paid_sixteen_windows() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        let first = limits.begin(&app, MODEL, gateway(), 1).unwrap();
        assert_eq!(first.window().max_unacked, 16);
        first.end(1_000, 0);
        let second = limits.begin(&app, MODEL, gateway(), 1).unwrap();
        assert_eq!(
            second.window().max_unacked,
            16,
            "1,000 of 1,024 tokens paid"
        );
        second.end(24, 0);
        let third = limits.begin(&app, MODEL, gateway(), 1).unwrap();
        assert_eq!(third.window(), FULL);
        // Riding on it: the 40 unacked tokens are at risk (of 64), so only an ack step
        // fits beside them, and then nothing.
        third.end(0, 40);
        let fourth = limits.begin(&app, MODEL, gateway(), 1).unwrap();
        assert_eq!(fourth.window().max_unacked, 16);
        assert!(limits.begin(&app, MODEL, gateway(), 1).is_err());
        drop(fourth);
        // Another key is a stranger.
        let other = limits
            .begin(&PublicKey([8; 32]), MODEL, gateway(), 1)
            .unwrap();
        assert_eq!(other.window().max_unacked, 16);
    }

    /// Found by review: trust and debts were decided from streams that had ended, so a
    /// key opening eight streams at once got eight windows (8K as a stranger, 8W once
    /// trusted after paying 2W). Open streams' windows now count as at risk. Failed
    /// before: all eight streams were admitted.
    #[test]
    fn streams_open_at_once_share_one_allowance() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        let open: Vec<_> = (0..2)
            .map(|_| limits.begin(&app, MODEL, gateway(), 1).unwrap())
            .collect();
        let refused = limits.begin(&app, MODEL, gateway(), 1).err().unwrap();
        assert!(refused.why.contains("at risk"), "{}", refused.why);
        assert_eq!(refused.retry_after, SHARE_RETRY * 4, "streams end soon");
        drop(open);
        // Paid for 2,048 tokens: an allowance of 128, two whole windows at once.
        limits
            .begin(&app, MODEL, gateway(), 1)
            .unwrap()
            .end(2_048, 0);
        let open: Vec<_> = (0..2)
            .map(|_| limits.begin(&app, MODEL, gateway(), 1).unwrap())
            .collect();
        assert!(open.iter().all(|t| t.window() == FULL));
        assert!(limits.begin(&app, MODEL, gateway(), 1).is_err());
    }

    #[test]
    fn streams_and_sessions_per_app_are_capped() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        paid_up(&limits, &app);
        let open: Vec<_> = (0..MAX_STREAMS_PER_APP)
            .map(|_| limits.begin(&app, MODEL, gateway(), 1).unwrap())
            .collect();
        assert!(limits.begin(&app, MODEL, gateway(), 1).is_err());
        drop(open);
        assert!(limits.begin(&app, MODEL, gateway(), 1).is_ok());
        for _ in 0..MAX_SESSIONS_PER_APP {
            limits.new_session(&app).unwrap();
        }
        assert!(limits.new_session(&app).is_err());
    }

    /// An app that asks again every few milliseconds took every slot that freed, and an
    /// app that waited as told was never served (the honest client's rate beside a
    /// flood was 0 in `cargo bench --bench load`).
    #[test]
    fn an_app_that_waits_for_a_slot_gets_the_next_one() {
        let limits = AppLimits::new(FULL);
        let (flooder, honest) = (PublicKey([7; 32]), PublicKey([8; 32]));
        paid_up(&limits, &flooder);
        paid_up(&limits, &honest);
        let held: Vec<_> = (0..2)
            .map(|_| limits.begin(&flooder, MODEL, gateway(), 1).unwrap())
            .collect();
        // The honest app found both slots taken.
        let peer = PeerId::random();
        limits.waits(&honest, MODEL, peer);
        let refused = limits.begin(&flooder, MODEL, gateway(), 1).err().unwrap();
        assert_eq!(refused.retry_after, SHARE_RETRY);
        assert!(refused.why.contains("another app waits"), "{}", refused.why);
        // The honest app gets its stream; its claim is then spent.
        let mine = limits.begin(&honest, MODEL, gateway(), 1).unwrap();
        assert!(limits.begin(&flooder, MODEL, gateway(), 1).is_ok());
        drop((held, mine));
        // Apps holding fewer streams than the one waiting are not held back; those
        // holding as many are.
        let a = limits.begin(&flooder, MODEL, gateway(), 1).unwrap();
        let b = limits.begin(&honest, MODEL, gateway(), 1).unwrap();
        limits.waits(&honest, MODEL, peer);
        assert!(limits
            .begin(&PublicKey([9; 32]), MODEL, gateway(), 1)
            .is_ok());
        assert!(limits.begin(&flooder, MODEL, gateway(), 1).is_err());
        drop((a, b));
    }

    /// An honest app that got Busy waits as told; a rival whose stream just ended asks
    /// again at once holding nothing, and took the slot (the fair-share rule let apps
    /// holding no stream through), and with a spare key always did. Failed before ties
    /// went to the waiter: `begin(&rival)` after the drop was served.
    #[test]
    fn a_rival_holding_nothing_does_not_take_the_slot_of_a_waiting_app() {
        let limits = AppLimits::new(FULL);
        let (rival, spare, honest) = (PublicKey([7; 32]), PublicKey([9; 32]), PublicKey([8; 32]));
        for app in [&rival, &spare, &honest] {
            paid_up(&limits, app);
        }
        let t = limits.begin(&rival, MODEL, gateway(), 1).unwrap();
        limits.waits(&honest, MODEL, PeerId::random());
        drop(t);
        assert!(
            limits.begin(&rival, MODEL, gateway(), 1).is_err(),
            "the rival asks again at once"
        );
        assert!(
            limits.begin(&spare, MODEL, gateway(), 1).is_err(),
            "or with a spare key"
        );
        let mine = limits
            .begin(&honest, MODEL, gateway(), 1)
            .expect("the waiting app gets the slot");
        drop(mine);
        assert!(
            limits.begin(&rival, MODEL, gateway(), 1).is_ok(),
            "the claim is spent"
        );
    }

    /// Waiters are served first come, first served; one peer holds a few claims only.
    #[test]
    fn waiting_apps_are_served_in_turn_and_claims_per_peer_are_capped() {
        let limits = AppLimits::new(FULL);
        let (first, second) = (PublicKey([1; 32]), PublicKey([2; 32]));
        limits.waits(&first, MODEL, PeerId::random());
        std::thread::sleep(Duration::from_millis(2));
        limits.waits(&second, MODEL, PeerId::random());
        assert!(
            limits.begin(&second, MODEL, gateway(), 1).is_err(),
            "the second waits its turn"
        );
        let t = limits.begin(&first, MODEL, gateway(), 1).unwrap();
        drop(t);
        assert!(limits.begin(&second, MODEL, gateway(), 1).is_ok());

        let peer = PeerId::random();
        for n in 0..MAX_WAITING_PER_PEER + 2 {
            limits.waits(&PublicKey([100 + n as u8; 32]), MODEL, peer);
        }
        assert_eq!(limits.claims.len(), MAX_WAITING_PER_PEER);
    }

    /// Two keys that kept claiming in turn held every other app off, on every model
    /// of the supplier, for as long as they liked: an app refused for another's claim
    /// got no claim of its own.
    #[test]
    fn a_claim_holds_off_only_its_model_and_a_refused_app_gets_in_line() {
        let limits = AppLimits::new(FULL);
        let (a1, a2, honest) = (PublicKey([1; 32]), PublicKey([2; 32]), PublicKey([3; 32]));
        for app in [&a1, &a2, &honest] {
            paid_up(&limits, app);
        }
        limits.waits(&a1, MODEL, gateway());
        assert!(limits.begin(&honest, "another-model", gateway(), 1).is_ok());
        // Refused while no slot is free, the honest app gets in line.
        assert!(limits.begin(&honest, MODEL, gateway(), 0).is_err());
        // The first key takes its slot; the second claims the next one, after the
        // honest app's claim.
        let t = limits.begin(&a1, MODEL, gateway(), 1).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        limits.waits(&a2, MODEL, gateway());
        drop(t);
        assert!(limits.begin(&a2, MODEL, gateway(), 1).is_err());
        assert!(limits.begin(&honest, MODEL, gateway(), 1).is_ok());
    }

    /// An app that paid P once could leave P/16 unacknowledged every ten minutes for
    /// ever: what it left unacknowledged comes off what it paid, sixteen to one, once
    /// the debt expires (third review: it counted twice while the debt lasted, as at
    /// risk and against the allowance, so a small payer that lost its link with a full
    /// window was refused for ten minutes). The expiry itself is the protocol rule's
    /// test (`allowance::tests::an_expired_debt_comes_off_what_the_app_paid`).
    #[test]
    fn tokens_left_unacknowledged_count_at_risk_and_only_that() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([4; 32]);
        limits
            .begin(&app, MODEL, gateway(), 1)
            .unwrap()
            .end(16 * 640, 0);
        limits.begin(&app, MODEL, gateway(), 1).unwrap().end(0, 320);
        let (allowance, owed) = limits
            .with(&app, |s| (s.risk.allowance(FULL), s.risk.owed()))
            .unwrap();
        assert_eq!((allowance, owed), (640, 320), "at risk, and only that");
        assert!(limits.begin(&app, MODEL, gateway(), 1).is_ok());
    }

    /// Streams refused before they served anything made a key unforgettable, so fresh
    /// keys asking once each could fill the table and shut strangers out.
    #[test]
    fn a_stream_that_came_to_nothing_leaves_nothing_to_remember() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([5; 32]);
        drop(limits.begin(&app, MODEL, gateway(), 1).unwrap());
        assert!(limits.with(&app, |s| s.risk.forgettable(FULL)).unwrap());
        // Acking a token or two makes no key more than a stranger (review: keys acking
        // one token each could fill the table); paying for more than that does.
        limits.begin(&app, MODEL, gateway(), 1).unwrap().end(16, 0);
        assert!(limits.with(&app, |s| s.risk.forgettable(FULL)).unwrap());
        limits
            .begin(&app, MODEL, gateway(), 1)
            .unwrap()
            .end(1_000, 0);
        assert!(!limits.with(&app, |s| s.risk.forgettable(FULL)).unwrap());
    }

    /// Third review: fresh keys that each left a stream owing an ack step (1 ms each,
    /// about 110 keys a second) filled the table for ten minutes, and every new key
    /// was refused. A stranger's debts and session count are what a fresh key has
    /// anyway, so a full table forgets them; apps that paid are kept.
    #[test]
    fn fresh_keys_leaving_owing_cannot_fill_the_table() {
        let limits = AppLimits::new(FULL);
        let payer = PublicKey([0xff; 32]);
        paid_up(&limits, &payer);
        for n in 0..MAX_APPS as u32 - 1 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&n.to_le_bytes());
            let app = PublicKey(key);
            limits.new_session(&app).unwrap();
            limits.begin(&app, MODEL, gateway(), 1).unwrap().end(0, 16);
        }
        assert!(limits
            .begin(&PublicKey([0xee; 32]), MODEL, gateway(), 1)
            .is_ok());
        let kept = limits.with(&payer, |s| s.risk.allowance(FULL)).unwrap();
        assert_eq!(kept, 1_000_000 / UNACKED_SHARE, "the payer is remembered");
    }

    /// Third review (high): an app refused for another's claim got a claim of its own
    /// even while a slot was free, so after one real `Busy`, keys through 256 peers
    /// kept 1,024 claims alive and the model's free slots from everyone. Claims are
    /// now made only while no slot is free, and lapse when their app does not come
    /// back. Failed before: every refused key left a claim.
    #[test]
    fn refused_keys_make_no_claims_while_a_slot_is_free() {
        let limits = AppLimits::new(FULL);
        let first = PublicKey([1; 32]);
        limits.waits(&first, MODEL, PeerId::random());
        for n in 0..64u8 {
            let refused = limits.begin(&PublicKey([100 + n; 32]), MODEL, PeerId::random(), 1);
            assert!(refused.is_err(), "the first claim holds the free slot");
        }
        assert_eq!(limits.claims.len(), 1);
        // Two free slots and one claim: the second slot is anyone's.
        assert!(limits
            .begin(&PublicKey([99; 32]), MODEL, gateway(), 2)
            .is_ok());
        // The claimant does not come back: its claim lapses and the slot is anyone's.
        std::thread::sleep(SHARE_RETRY + CLAIM_SLACK);
        assert!(limits
            .begin(&PublicKey([100; 32]), MODEL, gateway(), 1)
            .is_ok());
    }

    /// A claimant let through while every slot was still taken, and refused by the
    /// engine, kept no place: it went to the back of the line. It now keeps its place.
    #[test]
    fn a_claimant_refused_by_the_engine_keeps_its_place() {
        let limits = AppLimits::new(FULL);
        let (first, second) = (PublicKey([1; 32]), PublicKey([2; 32]));
        limits.waits(&first, MODEL, PeerId::random());
        std::thread::sleep(Duration::from_millis(2));
        limits.waits(&second, MODEL, PeerId::random());
        let mut ticket = limits.begin(&first, MODEL, gateway(), 0).unwrap();
        assert!(limits.contended(MODEL, 0), "the second waits");
        assert_eq!(ticket.busy(gateway()), Some(SHARE_RETRY));
        drop(ticket);
        assert!(limits.begin(&second, MODEL, gateway(), 1).is_err());
        assert!(limits.begin(&first, MODEL, gateway(), 1).is_ok());
    }
}
