//! What one app key may leave unpaid at one supplier: the window each new stream of it
//! gets. The rule is the supplier's alone (nothing here is signed); it lives in the
//! protocol crate so the node (`node/src/infer/app_limits.rs`) and the simulator run
//! the same code.
//!
//! The ack window lets an app that never acks take its window of tokens from a stream,
//! and keys are free, so a rider meets most suppliers as a stranger. A supplier
//! therefore bounds, per app key, the tokens **at risk**: those its streams ended with
//! unacknowledged in the last [`DEBT_WINDOW_MS`], plus the window of every stream it has
//! open (each could end with its whole window unacknowledged). They may reach at most
//! the app's **allowance**: twice the ack step (2K) for a stranger, or one token in
//! [`UNACKED_SHARE`] of those it has acknowledged here, if more (forgotten a
//! [`DEBT_WINDOW_MS`] after its last stream ended with none open). A new stream gets the
//! mesh's window W if that fits, one ack step (K) if only that fits, and nothing
//! otherwise. A debt that expires comes off what the app paid, sixteen to one, so a
//! payment buys a bounded amount of unpaid service, not a rate of it.
//!
//! So what one key takes from a supplier without paying is at most 2K tokens, or a
//! sixteenth of what it paid there, per [`DEBT_WINDOW_MS`], however many streams it
//! opens at once (`docs/PROTOCOL.md` §16 states the bound). Times are milliseconds on
//! any clock that does not go back; the caller passes them in.

use std::collections::VecDeque;

use super::flow::Window;

/// How long unacknowledged tokens count against their app, and how long an app's
/// acknowledged tokens are remembered after its last stream (milliseconds).
pub const DEBT_WINDOW_MS: u64 = 600_000;
/// An app may have at risk one token in this many of those it acknowledged here.
pub const UNACKED_SHARE: u64 = 16;

/// What one supplier remembers of one app key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppRisk {
    streams: usize,
    /// The windows of its open streams, summed.
    open_window: u32,
    /// When each stream ended with tokens unacknowledged, and how many.
    debts: VecDeque<(u64, u32)>,
    /// Tokens it acknowledged here.
    paid: u64,
    /// When its last stream ended, once it has paid or ended a stream that did.
    last_end_ms: Option<u64>,
}

impl AppRisk {
    /// An app that has paid `paid` tokens here, its last stream ended at `at_ms`.
    pub fn paid(paid: u64, at_ms: u64) -> Self {
        Self {
            paid,
            last_end_ms: Some(at_ms),
            ..Self::default()
        }
    }

    /// Forgets what has expired by `now_ms`: debts older than [`DEBT_WINDOW_MS`] (each
    /// taking sixteen times its tokens off what the app paid: while it lasts it counts
    /// as at risk, then against the allowance, once at a time), and what it paid, once
    /// it has had no stream open for a [`DEBT_WINDOW_MS`].
    pub fn prune(&mut self, now_ms: u64) {
        while let Some((_, n)) = self
            .debts
            .front()
            .filter(|(at, _)| now_ms.saturating_sub(*at) > DEBT_WINDOW_MS)
        {
            self.paid = self.paid.saturating_sub(UNACKED_SHARE * u64::from(*n));
            self.debts.pop_front();
        }
        if self.streams == 0
            && self
                .last_end_ms
                .is_some_and(|at| now_ms.saturating_sub(at) > DEBT_WINDOW_MS)
        {
            self.paid = 0;
            self.last_end_ms = None;
        }
    }

    /// Tokens its streams ended with unacknowledged and not yet expired.
    pub fn owed(&self) -> u32 {
        self.debts
            .iter()
            .map(|(_, n)| *n)
            .fold(0, u32::saturating_add)
    }

    /// Tokens at risk: owed, and the windows of its open streams.
    pub fn at_risk(&self) -> u64 {
        u64::from(self.owed()) + u64::from(self.open_window)
    }

    /// Tokens it may have at risk here: 2K, or a sixteenth of what it paid.
    pub fn allowance(&self, full: Window) -> u64 {
        (2 * u64::from(full.ack_every)).max(self.paid / UNACKED_SHARE)
    }

    /// The window its next stream gets, `full` (the mesh's) or one ack step, whichever
    /// first fits its allowance beside what it has at risk; `None` when neither does.
    pub fn window(&self, full: Window) -> Option<Window> {
        let allowance = self.allowance(full);
        let at_risk = self.at_risk();
        [full, step(full)]
            .into_iter()
            .find(|w| at_risk + u64::from(w.max_unacked) <= allowance)
    }

    /// Whether waiting lowers what it owes below what one ack step needs (owed tokens
    /// only go away with time; open windows go when their streams end).
    pub fn owes_too_much(&self, full: Window) -> bool {
        u64::from(self.owed()) + u64::from(step(full).max_unacked) > self.allowance(full)
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// A stream with `window` opens.
    pub fn open(&mut self, window: Window) {
        self.streams += 1;
        self.open_window = self.open_window.saturating_add(window.max_unacked);
    }

    /// A stream opened with `window` closes (what it left owing is [`Self::ended`]'s).
    pub fn close(&mut self, window: Window) {
        self.streams = self.streams.saturating_sub(1);
        self.open_window = self.open_window.saturating_sub(window.max_unacked);
    }

    /// A stream ended at `now_ms` with `acked` tokens acknowledged and `unacked` sent
    /// and never acknowledged (0 where the supplier, not the app, ended it early).
    pub fn ended(&mut self, acked: u32, unacked: u32, now_ms: u64) {
        let paid = self.paid.saturating_add(u64::from(acked));
        // A stream that came to nothing (refused, or nothing sent and nothing owed)
        // leaves an app with nothing paid forgettable.
        if paid > 0 || self.last_end_ms.is_some() {
            self.paid = paid;
            self.last_end_ms = Some(now_ms);
        }
        if unacked > 0 {
            self.debts.push_back((now_ms, unacked));
        }
    }

    /// Whether forgetting this app gives it nothing a fresh key would not have: no
    /// stream open and too little paid for more than a stranger's allowance (its debts
    /// are then what a fresh key has anyway, and keys are free).
    pub fn forgettable(&self, full: Window) -> bool {
        self.streams == 0 && self.paid / UNACKED_SHARE <= 2 * u64::from(full.ack_every)
    }
}

/// One ack step of `full`: the window a stranger's stream gets.
pub fn step(full: Window) -> Window {
    Window {
        ack_every: full.ack_every,
        max_unacked: full.ack_every.min(full.max_unacked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Window = Window {
        ack_every: 16,
        max_unacked: 64,
    };

    /// A stranger gets one ack step and may owe two; W fits once a sixteenth of what
    /// it paid covers it.
    #[test]
    fn a_stranger_gets_an_ack_step_and_a_payer_the_window() {
        let mut app = AppRisk::default();
        assert_eq!(app.window(FULL), Some(step(FULL)));
        app.ended(0, 16, 0);
        app.ended(0, 15, 0);
        assert_eq!(app.window(FULL), None);
        assert!(app.owes_too_much(FULL));
        let mut payer = AppRisk::paid(1_024, 0);
        assert_eq!(payer.window(FULL), Some(FULL));
        payer.open(FULL);
        assert_eq!(payer.at_risk(), 64);
        assert_eq!(
            payer.window(FULL),
            None,
            "its open window fills the allowance"
        );
        assert!(!payer.owes_too_much(FULL), "closing a stream makes room");
        payer.close(FULL);
        assert_eq!(payer.window(FULL), Some(FULL));
    }

    /// An app that paid P once could leave P/16 unacknowledged every ten minutes for
    /// ever: what it left unacknowledged comes off what it paid, sixteen to one, once
    /// the debt expires (a review found it counted twice while the debt lasted, as at
    /// risk and against the allowance).
    #[test]
    fn an_expired_debt_comes_off_what_the_app_paid() {
        let mut app = AppRisk::default();
        app.ended(0, 320, 0);
        app.ended(16 * 640, 0, DEBT_WINDOW_MS / 2);
        assert_eq!((app.allowance(FULL), app.owed()), (640, 320));
        app.prune(DEBT_WINDOW_MS + 1);
        assert_eq!(app.owed(), 0);
        assert_eq!(app.allowance(FULL), 320, "it paid 10,240 and took 320 free");
        // Ten minutes after its last stream, with none open, it is a stranger again.
        app.prune(DEBT_WINDOW_MS / 2 + DEBT_WINDOW_MS + 1);
        assert_eq!(app, AppRisk::default());
    }

    /// Streams that came to nothing leave nothing to remember; a token or two paid
    /// makes no key more than a stranger.
    #[test]
    fn only_payments_beyond_a_strangers_allowance_are_worth_remembering() {
        let mut app = AppRisk::default();
        app.open(step(FULL));
        assert!(!app.forgettable(FULL), "a stream is open");
        app.close(step(FULL));
        app.ended(0, 0, 5);
        assert_eq!(app, AppRisk::default());
        app.ended(16, 0, 5);
        assert!(app.forgettable(FULL));
        app.ended(1_000, 0, 6);
        assert!(!app.forgettable(FULL));
    }
}
