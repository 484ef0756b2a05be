//! What one app may take from a supplier, by key: streams at once, new sessions per
//! hour, and tokens it may leave unacknowledged.
//!
//! The ack window lets an app that never acks take its window of tokens from a stream,
//! and keys are free, so a rider meets most suppliers as a stranger. A supplier
//! therefore bounds, per app key, the tokens **at risk**: those its streams ended with
//! unacknowledged in the last [`DEBT_WINDOW`], plus the window of every stream it has
//! open (each could end with its whole window unacknowledged). They may reach at most
//! the app's **allowance**: twice the ack step (2K) for a stranger, or one token in
//! [`UNACKED_SHARE`] of those it has acknowledged here, if more (forgotten after a
//! [`DEBT_WINDOW`] without a stream). A new stream gets the mesh's window W if that
//! fits, one ack step (K) if only that fits, and is refused otherwise. So what one key
//! takes from a supplier without paying is at most 2K tokens, or a sixteenth of what it
//! paid there, per [`DEBT_WINDOW`], however many streams it opens at once; an honest
//! app waits one round trip per K tokens on its first answers at a supplier, and runs
//! more streams at once there as it pays (`docs/PROTOCOL.md` §16 states the bound).
//! Tokens a stream leaves unacknowledged because the supplier failed are not the
//! app's debt.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use relaymesh_protocol::metering::flow::Window;
use relaymesh_protocol::PublicKey;

/// Streams one app may have open at one supplier.
pub const MAX_STREAMS_PER_APP: usize = 8;
/// New sessions one app may open at one supplier per hour.
pub const MAX_SESSIONS_PER_APP: usize = 64;
/// How long unacknowledged tokens count against their app, and how long an app's
/// acknowledged tokens are remembered after its last stream.
pub const DEBT_WINDOW: Duration = Duration::from_secs(600);
/// Most apps remembered; past it, apps with nothing open, owed or paid go first, and
/// while none can go a new key is refused.
pub const MAX_APPS: usize = 65_536;
/// How long an app refused for want of a free slot has a claim on the next one.
pub const FAIR_WINDOW: Duration = Duration::from_secs(5);
/// Most apps with such a claim remembered at once.
pub const MAX_WAITING_APPS: usize = 1024;
/// Most such claims made through one peer (a gateway asks for its apps).
pub const MAX_WAITING_PER_PEER: usize = 4;
/// What a refused app is told to wait before asking again, after a refusal for its
/// share (short: a slot is kept for another app, and will be free for it soon).
pub const SHARE_RETRY: Duration = Duration::from_millis(500);
/// An app may have at risk one token in this many of those it acknowledged here.
pub const UNACKED_SHARE: u64 = 16;

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
    streams: usize,
    /// The windows of its open streams, summed.
    open_window: u32,
    /// When each stream ended with tokens unacknowledged, and how many.
    debts: VecDeque<(Instant, u32)>,
    /// When each session was countersigned.
    sessions: VecDeque<Instant>,
    /// Tokens it acknowledged here, and when its last stream ended.
    paid: (u64, Option<Instant>),
}

impl AppState {
    fn prune(&mut self, now: Instant) {
        while self
            .debts
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > DEBT_WINDOW)
        {
            self.debts.pop_front();
        }
        while self
            .sessions
            .front()
            .is_some_and(|at| now.duration_since(*at) > Duration::from_secs(3600))
        {
            self.sessions.pop_front();
        }
        if self.streams == 0
            && self
                .paid
                .1
                .is_some_and(|at| now.duration_since(at) > DEBT_WINDOW)
        {
            self.paid = (0, None);
        }
    }

    fn owed(&self) -> u32 {
        self.debts
            .iter()
            .map(|(_, n)| *n)
            .fold(0, u32::saturating_add)
    }

    /// Tokens this app may have at risk here: 2K, or a sixteenth of what it paid.
    fn allowance(&self, full: Window) -> u64 {
        (2 * u64::from(full.ack_every)).max(self.paid.0 / UNACKED_SHARE)
    }

    fn idle(&self) -> bool {
        self.streams == 0 && self.debts.is_empty() && self.paid.1.is_none()
    }
}

/// The limits of one supplier, over all its streams.
pub struct AppLimits {
    apps: Mutex<Apps>,
    /// The mesh's window, the most a stream gets.
    full: Window,
    /// Apps refused for want of a free slot of a model, when, and through which peer:
    /// each has a claim on a slot of that model that frees within [`FAIR_WINDOW`] over
    /// apps asking for it that hold as many streams as it or more and over later claims.
    waiting: Mutex<HashMap<(PublicKey, String), (Instant, PeerId)>>,
    /// Streams one app may hold, and sessions it may open per hour.
    caps: (usize, usize),
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
    window: Window,
    unacked: u32,
    acked: u32,
}

impl StreamTicket<'_> {
    /// The stream ends with `acked` tokens acknowledged and `unacked` sent and never
    /// acknowledged (0 where the supplier, not the app, ended it early).
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
        let mut apps = self.limits.apps.lock().expect("limits lock");
        if let Some(state) = apps.map.get_mut(&self.app) {
            let now = Instant::now();
            state.streams = state.streams.saturating_sub(1);
            state.open_window = state.open_window.saturating_sub(self.window.max_unacked);
            // What it left unacknowledged costs it sixteen times as much of what it paid,
            // so the allowance is a share of what it paid net of what it took free.
            let paid = state
                .paid
                .0
                .saturating_add(u64::from(self.acked))
                .saturating_sub(UNACKED_SHARE * u64::from(self.unacked));
            // A stream that came to nothing (refused, or nothing sent and nothing owed)
            // leaves an app with nothing paid forgettable.
            if paid > 0 || state.paid.1.is_some() || self.acked > 0 {
                state.paid = (paid, Some(now));
            }
            if self.unacked > 0 {
                state.debts.push_back((now, self.unacked));
            }
        }
    }
}

impl AppLimits {
    /// Limits for a mesh whose ack window is `full`.
    pub fn new(full: Window) -> Self {
        Self::with_caps(full, MAX_STREAMS_PER_APP, MAX_SESSIONS_PER_APP)
    }

    /// As [`Self::new`], with `streams_per_app` and `sessions_per_app` in place of the
    /// defaults.
    pub fn with_caps(full: Window, streams_per_app: usize, sessions_per_app: usize) -> Self {
        Self {
            apps: Mutex::new(Apps::default()),
            full,
            waiting: Mutex::new(HashMap::new()),
            caps: (streams_per_app, sessions_per_app),
        }
    }

    /// Runs `f` on `app`'s state; `None` when the table is full of apps that cannot be
    /// forgotten (swept at most once a second, so a flood of new keys costs no more).
    fn with<T>(&self, app: &PublicKey, f: impl FnOnce(&mut AppState) -> T) -> Option<T> {
        let mut apps = self.apps.lock().expect("limits lock");
        let now = Instant::now();
        if apps.map.len() >= MAX_APPS && !apps.map.contains_key(app) {
            if apps
                .swept
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
            {
                return None;
            }
            apps.swept = Some(now);
            apps.map.retain(|_, s| {
                s.prune(now);
                !s.idle()
            });
            if apps.map.len() >= MAX_APPS {
                return None;
            }
        }
        let state = apps.map.entry(*app).or_default();
        state.prune(now);
        Some(f(state))
    }

    /// `app` (asking through `peer`) was refused for want of a free slot of `model`,
    /// or for another app's claim on one: until it gets one (or [`FAIR_WINDOW`]
    /// passes), apps asking for `model` that hold as many streams as it or more give
    /// way to it, and so do apps that waited after it. One peer holds at most
    /// [`MAX_WAITING_PER_PEER`] claims (an app that claims and never comes back holds
    /// the others off for the window).
    pub fn waits(&self, app: &PublicKey, model: &str, peer: PeerId) {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let now = Instant::now();
        waiting.retain(|_, (since, _)| now.duration_since(*since) < FAIR_WINDOW);
        let key = (*app, model.to_owned());
        if waiting.contains_key(&key) {
            return;
        }
        let of_peer = waiting.values().filter(|(_, p)| *p == peer).count();
        if waiting.len() < MAX_WAITING_APPS && of_peer < MAX_WAITING_PER_PEER {
            waiting.insert(key, (now, peer));
        }
    }

    /// The fewest streams held by an app (other than `app`) whose claim on a slot of
    /// `model` comes before `app`'s: every live claim if `app` has none, the earlier
    /// ones (by when they were made) if it has one.
    fn least_waiting_before(&self, app: &PublicKey, model: &str) -> Option<usize> {
        let waiting = self.waiting.lock().expect("waiting lock");
        let now = Instant::now();
        let live = |since: &Instant| now.duration_since(*since) < FAIR_WINDOW;
        let mine = waiting
            .get(&(*app, model.to_owned()))
            .filter(|(since, _)| live(since))
            .map(|(since, _)| (*since, *app));
        let before: Vec<PublicKey> = waiting
            .iter()
            .filter(|((k, m), (since, _))| {
                k != app && m == model && live(since) && mine.is_none_or(|m| (*since, *k) < m)
            })
            .map(|((k, _), _)| *k)
            .collect();
        drop(waiting);
        let apps = self.apps.lock().expect("limits lock");
        before
            .iter()
            .map(|k| apps.map.get(k).map_or(0, |s| s.streams))
            .min()
    }

    /// A new stream of `app`, or why it is refused.
    ///
    /// Besides the limits above, a share: while another app that holds no more streams
    /// here than this one was refused for want of a slot (within [`FAIR_WINDOW`]), and
    /// this one does not itself wait since before it, this one is refused, so the next
    /// free slot goes to the one waiting, first come first served (without this, an
    /// app that asks again every few milliseconds takes every slot that frees, and an
    /// honest app that waits as told is never served; with ties let through, a rival
    /// holding nothing, or a spare key, took the slot before the waiter came back).
    /// Claims are per model (`model`, asked through `peer`), and an app refused for
    /// another's claim gets in line itself: two keys that keep claiming in turn hold
    /// no one off for ever, and no one off another model.
    pub fn begin(
        &self,
        app: &PublicKey,
        model: &str,
        peer: PeerId,
    ) -> Result<StreamTicket<'_>, Refused> {
        let (max_streams, full) = (self.caps.0, self.full);
        let step = Window {
            ack_every: full.ack_every,
            max_unacked: full.ack_every.min(full.max_unacked),
        };
        let least_waiting = self.least_waiting_before(app, model);
        let mut gave_way = false;
        let refused = |why: String, retry_after| Refused { why, retry_after };
        let window = self
            .with(app, |state| {
                let allowance = state.allowance(full);
                let owed = state.owed();
                let at_risk = u64::from(owed) + u64::from(state.open_window);
                let Some(window) = [full, step]
                    .into_iter()
                    .find(|w| at_risk + u64::from(w.max_unacked) <= allowance)
                else {
                    // Owed tokens only go away with time; open windows when streams end.
                    let retry = if u64::from(owed) + u64::from(step.max_unacked) > allowance {
                        DEBT_WINDOW / 10
                    } else {
                        SHARE_RETRY * 4
                    };
                    return Err(refused(format!(
                        "app {} has {at_risk} tokens at risk here ({owed} left unacknowledged in the last {} minutes, the rest in open streams' windows) and may have {allowance}: ack what you take",
                        app.peer_id(),
                        DEBT_WINDOW.as_secs() / 60
                    ), retry));
                };
                if state.streams >= max_streams {
                    return Err(refused(
                        format!("app {} has {max_streams} streams open here already", app.peer_id()),
                        SHARE_RETRY * 4,
                    ));
                }
                if least_waiting.is_some_and(|n| n <= state.streams) {
                    gave_way = true;
                    return Err(refused(format!(
                        "app {} holds {} stream(s) here while another app waits for a slot",
                        app.peer_id(),
                        state.streams
                    ), SHARE_RETRY));
                }
                state.streams += 1;
                state.open_window = state.open_window.saturating_add(window.max_unacked);
                Ok(window)
            })
            .unwrap_or_else(|| Err(table_full()))
            .inspect_err(|_| {
                if gave_way {
                    self.waits(app, model, peer);
                }
            })?;
        self.waiting
            .lock()
            .expect("waiting lock")
            .remove(&(*app, model.to_owned()));
        Ok(StreamTicket {
            limits: self,
            app: *app,
            window,
            unacked: 0,
            acked: 0,
        })
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
    use super::*;

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
            .begin(app, MODEL, gateway())
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
        limits.begin(&app, MODEL, gateway()).unwrap().end(0, 16);
        limits.begin(&app, MODEL, gateway()).unwrap().end(0, 15);
        let refused = limits.begin(&app, MODEL, gateway()).err().unwrap();
        assert!(refused.why.contains("at risk"), "{}", refused.why);
        assert_eq!(refused.retry_after, DEBT_WINDOW / 10);
        // Another app is not affected.
        assert!(limits.begin(&PublicKey([8; 32]), MODEL, gateway()).is_ok());
    }

    /// The free ride per stream was the whole window W for any key, and keys are free.
    /// A stranger now gets one ack step (K); the window W only fits once a sixteenth of
    /// what it paid here covers it. Failed before: every stream had the full window.
    #[test]
    fn a_stranger_gets_one_ack_step_until_it_has_paid_sixteen_windows() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        let first = limits.begin(&app, MODEL, gateway()).unwrap();
        assert_eq!(first.window().max_unacked, 16);
        first.end(1_000, 0);
        let second = limits.begin(&app, MODEL, gateway()).unwrap();
        assert_eq!(
            second.window().max_unacked,
            16,
            "1,000 of 1,024 tokens paid"
        );
        second.end(24, 0);
        let third = limits.begin(&app, MODEL, gateway()).unwrap();
        assert_eq!(third.window(), FULL);
        // Riding on it: the unacked tokens are at risk, and they cost it sixteen times
        // as much of what it paid, so it is a stranger again with 40 tokens owed.
        third.end(0, 40);
        assert!(limits.begin(&app, MODEL, gateway()).is_err());
        // Another key is a stranger.
        let other = limits.begin(&PublicKey([8; 32]), MODEL, gateway()).unwrap();
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
            .map(|_| limits.begin(&app, MODEL, gateway()).unwrap())
            .collect();
        let refused = limits.begin(&app, MODEL, gateway()).err().unwrap();
        assert!(refused.why.contains("at risk"), "{}", refused.why);
        assert_eq!(refused.retry_after, SHARE_RETRY * 4, "streams end soon");
        drop(open);
        // Paid for 2,048 tokens: an allowance of 128, two whole windows at once.
        limits.begin(&app, MODEL, gateway()).unwrap().end(2_048, 0);
        let open: Vec<_> = (0..2)
            .map(|_| limits.begin(&app, MODEL, gateway()).unwrap())
            .collect();
        assert!(open.iter().all(|t| t.window() == FULL));
        assert!(limits.begin(&app, MODEL, gateway()).is_err());
    }

    #[test]
    fn streams_and_sessions_per_app_are_capped() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([7; 32]);
        paid_up(&limits, &app);
        let open: Vec<_> = (0..MAX_STREAMS_PER_APP)
            .map(|_| limits.begin(&app, MODEL, gateway()).unwrap())
            .collect();
        assert!(limits.begin(&app, MODEL, gateway()).is_err());
        drop(open);
        assert!(limits.begin(&app, MODEL, gateway()).is_ok());
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
            .map(|_| limits.begin(&flooder, MODEL, gateway()).unwrap())
            .collect();
        // The honest app found both slots taken.
        let peer = PeerId::random();
        limits.waits(&honest, MODEL, peer);
        let refused = limits.begin(&flooder, MODEL, gateway()).err().unwrap();
        assert_eq!(refused.retry_after, SHARE_RETRY);
        assert!(refused.why.contains("another app waits"), "{}", refused.why);
        // The honest app gets its stream; its claim is then spent.
        let mine = limits.begin(&honest, MODEL, gateway()).unwrap();
        assert!(limits.begin(&flooder, MODEL, gateway()).is_ok());
        drop((held, mine));
        // Apps holding fewer streams than the one waiting are not held back; those
        // holding as many are.
        let a = limits.begin(&flooder, MODEL, gateway()).unwrap();
        let b = limits.begin(&honest, MODEL, gateway()).unwrap();
        limits.waits(&honest, MODEL, peer);
        assert!(limits.begin(&PublicKey([9; 32]), MODEL, gateway()).is_ok());
        assert!(limits.begin(&flooder, MODEL, gateway()).is_err());
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
        let t = limits.begin(&rival, MODEL, gateway()).unwrap();
        limits.waits(&honest, MODEL, PeerId::random());
        drop(t);
        assert!(
            limits.begin(&rival, MODEL, gateway()).is_err(),
            "the rival asks again at once"
        );
        assert!(
            limits.begin(&spare, MODEL, gateway()).is_err(),
            "or with a spare key"
        );
        let mine = limits
            .begin(&honest, MODEL, gateway())
            .expect("the waiting app gets the slot");
        drop(mine);
        assert!(
            limits.begin(&rival, MODEL, gateway()).is_ok(),
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
            limits.begin(&second, MODEL, gateway()).is_err(),
            "the second waits its turn"
        );
        let t = limits.begin(&first, MODEL, gateway()).unwrap();
        drop(t);
        assert!(limits.begin(&second, MODEL, gateway()).is_ok());

        let peer = PeerId::random();
        for n in 0..MAX_WAITING_PER_PEER + 2 {
            limits.waits(&PublicKey([100 + n as u8; 32]), MODEL, peer);
        }
        let claims = limits.waiting.lock().unwrap().len();
        assert_eq!(claims, MAX_WAITING_PER_PEER);
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
        assert!(limits.begin(&honest, "another-model", gateway()).is_ok());
        assert!(limits.begin(&honest, MODEL, gateway()).is_err());
        // The first key takes its slot; the second claims the next one, after the
        // honest app's claim.
        let t = limits.begin(&a1, MODEL, gateway()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        limits.waits(&a2, MODEL, gateway());
        drop(t);
        assert!(limits.begin(&a2, MODEL, gateway()).is_err());
        assert!(limits.begin(&honest, MODEL, gateway()).is_ok());
    }

    /// An app that paid P once could leave P/16 unacknowledged every ten minutes for
    /// ever: what it left unacknowledged now comes off what it paid, sixteen to one.
    #[test]
    fn tokens_left_unacknowledged_come_off_what_the_app_paid() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([4; 32]);
        limits
            .begin(&app, MODEL, gateway())
            .unwrap()
            .end(16 * 640, 0);
        let allowance = |l: &AppLimits| l.with(&app, |s| s.allowance(FULL)).unwrap();
        assert_eq!(allowance(&limits), 640);
        limits.begin(&app, MODEL, gateway()).unwrap().end(0, 320);
        assert_eq!(allowance(&limits), 320, "it paid 10,240 and took 320 free");
    }

    /// Streams refused before they served anything made a key unforgettable, so fresh
    /// keys asking once each could fill the table and shut strangers out.
    #[test]
    fn a_stream_that_came_to_nothing_leaves_nothing_to_remember() {
        let limits = AppLimits::new(FULL);
        let app = PublicKey([5; 32]);
        drop(limits.begin(&app, MODEL, gateway()).unwrap());
        assert!(limits.with(&app, |s| s.idle()).unwrap());
        limits.begin(&app, MODEL, gateway()).unwrap().end(16, 0);
        assert!(!limits.with(&app, |s| s.idle()).unwrap());
    }
}
