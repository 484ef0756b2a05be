//! How long a stream waits for its app (what a stream its app left owes is the
//! protocol crate's rule, `relaymesh_protocol::metering::allowance::owed`).
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

use super::{CONTENDED_ACK_TIMEOUT, FRAME_TIMEOUT};

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
}
