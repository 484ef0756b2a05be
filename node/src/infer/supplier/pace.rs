//! How long a stream waits for its app, and what a stream its app left owes.
//!
//! A stream whose window is full holds a generation place while it waits for an ack.
//! Nobody minds while slots are free; while every slot of its model is taken and
//! someone waits for one, it may wait [`CONTENDED_ACK_TIMEOUT`] at a time and, beyond
//! the first [`STALL_GRACE`] of each wait (a round trip: a stranger's window of one ack
//! step stalls that long every K tokens by design), [`CONTENDED_STALL_TOTAL`] in all (a
//! minimum pace: an app that acks just inside the deadline cannot hold a place at a
//! trickle). Whether others wait is looked at again at least every [`LOOK_EVERY`], not
//! decided once when the wait begins.

use std::time::{Duration, Instant};

use super::{CONTENDED_ACK_TIMEOUT, FRAME_TIMEOUT, HEDGE_GRACE};

/// How often a waiting stream looks again at whether others want its place.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long, in all, a stream may hold a place with its window full while others wait
/// for one, not counting the first [`STALL_GRACE`] of each wait.
pub const CONTENDED_STALL_TOTAL: Duration = Duration::from_secs(10);
/// The start of each wait for an ack that does not count towards
/// [`CONTENDED_STALL_TOTAL`]: a round trip on a slow link.
pub const STALL_GRACE: Duration = Duration::from_secs(1);
/// How long a finished stream waits for a last ack that pays for nothing: every token
/// was acknowledged and the prompt paid with the first ack (found by review: waiting
/// the whole [`FRAME_TIMEOUT`] for it let an app hold a stream 30 s for every K tokens
/// it paid). An honest app sends it within a round trip of `Done`.
pub const WEIGHTLESS_LAST_ACK: Duration = Duration::from_secs(5);
/// Prompt bytes read for free by a stream its app left before the first token (a
/// long question, about 2,000 tokens; a gateway's hedge leaves such streams).
pub const PROMPT_FREE_BYTES: u32 = 8 * 1024;
/// Prompt bytes beyond [`PROMPT_FREE_BYTES`] that count as one token owed by such a
/// stream (about 16 tokens: reading a prompt costs a batched engine far less per
/// token than generating).
pub const PROMPT_BYTES_PER_OWED_TOKEN: u32 = 64;

/// The clock of one stream's waits for its app.
pub struct AckClock {
    /// The last ack or token: the app has [`FRAME_TIMEOUT`] from it to send an owed ack.
    heard: Instant,
    /// When it was last looked at, and whether it then held a place others wanted.
    last: (Instant, bool),
    /// Time spent holding a place others wanted: in this stall, and in all.
    stall: Duration,
    total: Duration,
}

impl AckClock {
    /// A stream starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            heard: now,
            last: (now, false),
            stall: Duration::ZERO,
            total: Duration::ZERO,
        }
    }

    /// Something came or went (an ack, a token, `Done`).
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// Whether a finished stream has waited long enough, at `now`, for a last ack that
    /// would pay for nothing: with `acked` tokens acknowledged (the first ack paid the
    /// prompt) and `unacked` sent since, none (see [`WEIGHTLESS_LAST_ACK`]).
    pub fn weightless_wait_over(&self, now: Instant, acked: u32, unacked: u32) -> bool {
        acked > 0
            && unacked == 0
            && now.saturating_duration_since(self.heard) >= WEIGHTLESS_LAST_ACK
    }

    /// A look at `now`: `owed` says whether the app owes an ack, `holding` whether the
    /// stream's window is full while it holds a generation place someone waits for.
    /// Errs when the stream must end.
    pub fn look(&mut self, now: Instant, owed: bool, holding: bool) -> Result<(), String> {
        let (since, was_holding) = self.last;
        if was_holding {
            let before = self.stall.saturating_sub(STALL_GRACE);
            self.stall += now.saturating_duration_since(since);
            self.total += self.stall.saturating_sub(STALL_GRACE) - before;
        }
        if !holding {
            self.stall = Duration::ZERO;
        }
        self.last = (now, holding);
        if self.stall >= CONTENDED_ACK_TIMEOUT || self.total >= CONTENDED_STALL_TOTAL {
            return Err("no ack in time while others wait for this stream's place".into());
        }
        if owed && now.saturating_duration_since(self.heard) >= FRAME_TIMEOUT {
            return Err("no ack in time".into());
        }
        Ok(())
    }
}

/// How a stream ended, for what its app owes.
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
    /// How long its request waited for a generation place (a queue, not work).
    pub queued: Duration,
    /// The request's signed prompt size.
    pub prompt_bytes: u32,
}

/// Tokens a stream's app owes at its end: those sent and never acknowledged; and, for
/// a stream left with nothing acknowledged, at least an ack step, and a token more per
/// [`PROMPT_BYTES_PER_OWED_TOKEN`] of prompt beyond [`PROMPT_FREE_BYTES`] (its prompt
/// was read for nothing, and leaving before the first token would otherwise cost
/// nothing), unless its request waited [`HEDGE_GRACE`] or more for a place: an app
/// that gave up on a busy supplier (a gateway's hedge) took nothing from it. A wait
/// that was work (reading the prompt) is not a queue: leaving a slow prefill owes.
pub fn owed(end: &Ending) -> u32 {
    if end.clean {
        0
    } else if end.acked == 0 && end.sent == 0 && end.queued >= HEDGE_GRACE {
        end.unacked
    } else if end.acked == 0 {
        let read = end
            .prompt_bytes
            .saturating_sub(PROMPT_FREE_BYTES)
            .div_ceil(PROMPT_BYTES_PER_OWED_TOKEN);
        end.unacked.max(end.ack_every.saturating_add(read))
    } else {
        end.unacked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished stream stops waiting for a last ack that pays for nothing after
    /// [`WEIGHTLESS_LAST_ACK`], not [`FRAME_TIMEOUT`]; one that pays (tokens since the
    /// last ack, or the prompt of a stream with none acknowledged) is waited for.
    #[test]
    fn a_last_ack_that_pays_for_nothing_is_not_waited_for_long() {
        let t0 = Instant::now();
        let clock = AckClock::new(t0);
        let later = t0 + WEIGHTLESS_LAST_ACK;
        assert!(!clock.weightless_wait_over(t0, 16, 0), "a round trip first");
        assert!(clock.weightless_wait_over(later, 16, 0));
        assert!(
            !clock.weightless_wait_over(later, 16, 3),
            "three tokens are owed"
        );
        assert!(
            !clock.weightless_wait_over(later, 0, 0),
            "the prompt is owed"
        );
    }

    /// Third review: the 5 s deadline was chosen once, when a wait began, so a stream
    /// that stalled while a slot was free kept 30 s after the slots filled up. It is
    /// now looked at again while the stream waits.
    #[test]
    fn a_stall_is_held_to_the_contended_deadline_once_others_wait() {
        let t0 = Instant::now();
        let mut clock = AckClock::new(t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 1..=10 {
            clock.look(at(s), true, false).unwrap();
        }
        // Others are first seen waiting at 11 s: five seconds later the stream ends.
        for s in 11..16 {
            clock.look(at(s), true, true).unwrap();
        }
        assert!(clock.look(at(16), true, true).is_err());
    }

    /// Third review: acking every 4.9 s held a place at a trickle while others waited.
    /// Time held so is now summed over the stream.
    #[test]
    fn acks_just_inside_the_deadline_do_not_hold_a_place_for_ever() {
        let t0 = Instant::now();
        let mut clock = AckClock::new(t0);
        let mut now = t0;
        let mut ended = None;
        for round in 0..5 {
            clock.look(now, true, true).unwrap();
            now += Duration::from_millis(4_900);
            if clock.look(now, true, true).is_err() {
                ended = Some(round);
                break;
            }
            // The ack opens the window for a moment.
            clock.heard(now);
            clock.look(now, true, false).unwrap();
        }
        assert_eq!(
            ended,
            Some(2),
            "ten seconds held in all, past each wait's grace"
        );
    }

    /// Review: a stranger's window is one ack step, so it stalls one round trip every
    /// K tokens by design; counting those stalls cut long answers on slow links.
    #[test]
    fn a_round_trip_every_ack_step_is_no_stall() {
        let t0 = Instant::now();
        let mut clock = AckClock::new(t0);
        let mut now = t0;
        for _ in 0..10_000 {
            clock.look(now, true, true).unwrap();
            now += Duration::from_millis(400);
            clock.look(now, true, true).unwrap();
            clock.heard(now);
            clock.look(now, true, false).unwrap();
            now += Duration::from_millis(50);
        }
    }

    #[test]
    fn an_app_that_owes_nothing_is_not_timed_out() {
        let t0 = Instant::now();
        let mut clock = AckClock::new(t0);
        let late = t0 + FRAME_TIMEOUT + Duration::from_secs(1);
        assert!(clock.look(late, false, false).is_ok(), "a long prefill");
        assert!(clock.look(late, true, false).is_err());
    }

    fn left(queued: Duration, prompt_bytes: u32) -> Ending {
        Ending {
            clean: false,
            acked: 0,
            sent: 0,
            unacked: 0,
            ack_every: 16,
            queued,
            prompt_bytes,
        }
    }

    /// The hedge grace: an app that leaves a supplier that kept its request waiting for
    /// a place [`HEDGE_GRACE`] or more owes nothing; one that leaves sooner owes an ack
    /// step. Review: the grace counted the prefill too, so a prompt slow to read could
    /// be left at 5 s for free, again and again.
    #[test]
    fn leaving_a_queue_is_free_and_leaving_work_is_not() {
        assert_eq!(owed(&left(HEDGE_GRACE, 100)), 0);
        assert_eq!(owed(&left(HEDGE_GRACE - Duration::from_millis(1), 100)), 16);
    }

    /// Third review: leaving before the first token owed one ack step whatever the
    /// prompt, so a huge prompt was read for the price of a short one. A long question
    /// (what a hedge leaves) still owes one ack step.
    #[test]
    fn leaving_before_the_first_token_owes_by_the_prompt_read() {
        let quick = Duration::from_millis(10);
        assert_eq!(owed(&left(quick, PROMPT_FREE_BYTES + 64 * 1000)), 1016);
        assert_eq!(owed(&left(quick, PROMPT_FREE_BYTES)), 16);
        assert_eq!(owed(&left(quick, 10)), 16);
        let paid = Ending {
            acked: 16,
            sent: 20,
            unacked: 4,
            ..left(quick, 64 * 1000)
        };
        assert_eq!(owed(&paid), 4, "an app that acked owes what it did not");
        let clean = Ending {
            clean: true,
            ..left(quick, 64 * 1000)
        };
        assert_eq!(owed(&clean), 0);
    }
}
