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

use super::compute_units::CuFormula;
use super::flow::Window;

/// How long unacknowledged tokens count against their app, and how long an app's
/// acknowledged tokens are remembered after its last stream (milliseconds).
pub const DEBT_WINDOW_MS: u64 = 600_000;
/// An app may have at risk one token in this many of those it acknowledged here.
pub const UNACKED_SHARE: u64 = 16;

/// How long a request may wait for a generation place (a queue, not work) before its
/// app may leave it, with nothing sent, owing nothing: a gateway's default hedge
/// deadline (milliseconds).
pub const HEDGE_GRACE_MS: u64 = 5_000;

/// Prompt bytes read for free by a stream its app left before its first token (a long
/// question, about 2,000 tokens; a gateway's hedge leaves such streams).
pub const PROMPT_FREE_BYTES: u32 = 8 * 1024;
/// Prompt bytes beyond [`PROMPT_FREE_BYTES`] that count as one token owed by such a
/// stream (about 16 tokens: reading a prompt costs a batched engine far less per token
/// than generating).
pub const PROMPT_BYTES_PER_OWED_TOKEN: u32 = 64;

/// How a stream ended, for what its app owes ([`owed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ending {
    /// The app closed it properly, or the supplier failed: nothing is owed.
    pub clean: bool,
    /// Tokens acknowledged, and sent.
    pub acked: u32,
    pub sent: u32,
    /// Tokens sent and not acknowledged.
    pub unacked: u32,
    /// The stream's ack step K.
    pub ack_every: u32,
    /// How long its request waited for a generation place (a queue, not work), in
    /// milliseconds.
    pub queued_ms: u64,
    /// Its request's signed prompt size.
    pub prompt_bytes: u32,
    /// Its prompt's units as tokens ([`owed_tokens`], under the supplier's own
    /// formula): what reading it was worth.
    pub prompt_tokens: u32,
}

/// Tokens a stream's app owes at its end: those sent and never acknowledged, and for a
/// stream left with nothing acknowledged (its prompt, which the first ack pays, read
/// for nothing), more:
///
/// - sent tokens and left before its first ack (what an app that rides does): at least
///   an ack step, and its prompt's worth in tokens besides;
/// - left before its first token (what a gateway's hedge and a quick cancel do): an ack
///   step, and a token per [`PROMPT_BYTES_PER_OWED_TOKEN`] of prompt beyond
///   [`PROMPT_FREE_BYTES`]; nothing if its request waited [`HEDGE_GRACE_MS`] or more
///   for a place, since an app that gave up on a busy supplier took nothing from it
///   (a wait that was work, reading the prompt, is not a queue).
///
/// Before the prompt counted in full for the first case, an app that stopped at its
/// first ack took every prompt under 8 KiB for nothing: most of what such riders took
/// (`docs/SIMULATION.md`). It counts only there (found by review: counted for a stream
/// left before its first token, one lost hedge of any prompt filled a stranger's
/// allowance, and a slow supplier could make an app's hedges fill it at its rivals).
pub fn owed(end: &Ending) -> u32 {
    if end.clean {
        0
    } else if end.acked > 0 {
        end.unacked
    } else if end.sent > 0 {
        end.unacked
            .max(end.ack_every)
            .saturating_add(end.prompt_tokens)
    } else if end.queued_ms >= HEDGE_GRACE_MS {
        end.unacked
    } else {
        let read = end
            .prompt_bytes
            .saturating_sub(PROMPT_FREE_BYTES)
            .div_ceil(PROMPT_BYTES_PER_OWED_TOKEN);
        end.unacked.max(end.ack_every.saturating_add(read))
    }
}

/// The most units one token is paid under `cu` (at least 1).
fn token_units(cu: &CuFormula) -> u64 {
    (u64::from(cu.output_per_byte) * u64::from(cu.token_bytes)).max(1)
}

/// `units` as tokens at the most a token is paid under `cu`, rounded up: what a prompt
/// left unpaid counts for in its app's debt. `cu` is the supplier's own formula, not
/// the session's: the app proposes the session's factors (at least the supplier's),
/// and an output factor of 1,000 would make an 8 KiB prompt owe 2 tokens, not 342
/// (found by review).
pub fn owed_tokens(cu: &CuFormula, units: u64) -> u32 {
    u32::try_from(units.div_ceil(token_units(cu))).unwrap_or(u32::MAX)
}

/// `units` as tokens at the most a token is paid under `cu`, rounded down: what a paid
/// prompt (or embedding's inputs) counts for in its app's payments (`cu` the supplier's
/// own formula, as for [`owed_tokens`]).
pub fn paid_tokens(cu: &CuFormula, units: u64) -> u32 {
    u32::try_from(units / token_units(cu)).unwrap_or(u32::MAX)
}

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

    /// A stream ended at `now_ms` having paid `paid` tokens (those acknowledged, and
    /// its prompt's worth once an ack paid it: [`paid_tokens`]) and owing `unacked`
    /// ([`owed`]; 0 where the supplier, not the app, ended it early).
    pub fn ended(&mut self, paid: u32, unacked: u32, now_ms: u64) {
        let paid = self.paid.saturating_add(u64::from(paid));
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

    fn left(queued_ms: u64, prompt_bytes: u32) -> Ending {
        let cu = CuFormula::default();
        Ending {
            clean: false,
            acked: 0,
            sent: 0,
            unacked: 0,
            ack_every: 16,
            queued_ms,
            prompt_bytes,
            prompt_tokens: owed_tokens(&cu, cu.prompt_units(prompt_bytes)),
        }
    }

    /// The hedge grace: an app that leaves a supplier that kept its request waiting for
    /// a place [`HEDGE_GRACE_MS`] or more, nothing sent, owes nothing; one that leaves
    /// sooner owes an ack step. Review: the grace counted the prefill too, so a prompt
    /// slow to read could be left at 5 s for free, again and again.
    #[test]
    fn leaving_a_queue_is_free_and_leaving_work_is_not() {
        assert_eq!(owed(&left(HEDGE_GRACE_MS, 100)), 0);
        assert_eq!(owed(&left(HEDGE_GRACE_MS - 1, 100)), 16);
    }

    /// Third review: leaving before the first token owed one ack step whatever the
    /// prompt, so a huge prompt was read for the price of a short one. A long question
    /// (what a hedge leaves) still owes one ack step, and so does a short one: a lost
    /// hedge must not fill a stranger's allowance (found by review when the prompt
    /// counted in full there too).
    #[test]
    fn leaving_before_the_first_token_owes_by_the_prompt_read() {
        assert_eq!(owed(&left(10, PROMPT_FREE_BYTES + 64 * 1000)), 1016);
        assert_eq!(owed(&left(10, PROMPT_FREE_BYTES)), 16);
        assert_eq!(owed(&left(10, 800)), 16);
    }

    /// An app that takes tokens and stops before its first ack owes its prompt
    /// besides the tokens it left unacknowledged: riders that stopped there took every
    /// prompt under 8 KiB free, most of what they took. An app that acked owes only
    /// what it did not ack.
    #[test]
    fn stopping_before_the_first_ack_owes_the_prompt_read() {
        let cu = CuFormula::default();
        // 800 prompt bytes at 1 unit a byte, a token at most 4 × 6 units.
        let stopped = Ending {
            sent: 16,
            unacked: 16,
            ..left(0, 800)
        };
        assert_eq!(stopped.prompt_tokens, 34);
        assert_eq!(owed(&stopped), 50);
        let queued = Ending {
            queued_ms: HEDGE_GRACE_MS,
            ..stopped
        };
        assert_eq!(owed(&queued), 50, "a token came: the prompt was read");
        let small = Ending {
            sent: 3,
            unacked: 3,
            ..left(0, 10)
        };
        assert_eq!(owed(&small), 17, "at least an ack step");
        let paid = Ending {
            acked: 16,
            sent: 20,
            unacked: 4,
            ..left(0, 800)
        };
        assert_eq!(owed(&paid), 4, "an app that acked owes what it did not");
        let clean = Ending {
            clean: true,
            ..stopped
        };
        assert_eq!(owed(&clean), 0);
        assert_eq!(paid_tokens(&cu, 47), 1, "paid rounds down, owed up");
        assert_eq!(owed_tokens(&cu, 47), 2);
        assert_eq!(owed_tokens(&cu, u64::MAX), u32::MAX);
        // A paid embedding of 8 KiB of inputs counts as 341 tokens paid (found by
        // review: an app paying for embeddings stayed a stranger).
        assert_eq!(paid_tokens(&cu, cu.input_units(8192, true)), 341);
        let weightless = CuFormula {
            output_per_byte: 0,
            ..cu
        };
        assert_eq!(paid_tokens(&weightless, 24), 24, "no division by zero");
    }
}
