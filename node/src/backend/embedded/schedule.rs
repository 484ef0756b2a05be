//! Which sequences get tokens in the next decode step: an app asking more at once
//! than another runs on what the other leaves.
//!
//! With one tenant every ready sequence is in every step (continuous batching). With
//! several, the tenants holding the fewest sequences (the light ones) put all their
//! work in each step: their next tokens and a prompt chunk. The others (riders) add
//! tokens only as far as the light ones barely feel it: each step earns the riders
//! [`RIDE_SHARE`] (a twentieth) of the time the light ones' work took in it, in tokens
//! at the measured cost of one more token in a step, and they spend it in turns
//! (least recently stepped first). On a CPU, where one more token costs about half a
//! lone step, an app streaming one answer beside a flood of another's keeps about 95%
//! of its speed and the flood crawls (a token every tenth step); on a GPU, where
//! batching is nearly free, the riders ride every step. Alone, a heavy app has the
//! whole batch again. Held counts, not recent usage, rank the
//! tenants: a rank cannot swing from step to step, and apps holding as many share
//! alike.
//!
//! Written here rather than taken from a crate: the rule is the node's own (tenants
//! are mesh apps), and it sits on llama.cpp's batch and the loop's own timings.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::Tenant;

/// Most prompt tokens read in a step while other sequences are generating.
pub const PREFILL_CHUNK: usize = 128;

/// The share of the light tenants' time the riders may add to the steps after it.
pub const RIDE_SHARE: f64 = 0.05;

/// Weight of the newest timing in the running averages.
const SMOOTHING: f64 = 0.1;
/// A timing counts at most this many times the running average: a step the rest of
/// the machine preempted is not what a step costs. (One lone step of half a second
/// beside 10 ms ones made tokens look free for the next twenty steps, so a flood
/// rode every step: an engine test saw the flood finish first in a busy CI run.)
const OUTLIER: f64 = 2.0;

/// What one sequence could put in the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// Whose it is.
    pub tenant: Tenant,
    /// It has a next token to decode.
    pub next: bool,
    /// Prompt tokens it still has to read (0 while generating or paused).
    pub prompt_left: usize,
    /// The step it last had tokens in (0: never).
    pub last_turn: u64,
}

impl Want {
    fn has_work(&self) -> bool {
        self.next || self.prompt_left > 0
    }
}

/// The plan of one step: tokens per sequence, and what the step holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tokens each sequence puts in the step (by index in the wants; 0 leaves it out).
    pub take: Vec<usize>,
    /// Sequences of riders with work (the most tokens they may bank).
    riders: usize,
    /// Tokens the riders put in.
    rode: usize,
}

/// The scheduler's memory: what a step costs, and the riders' earned tokens.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Seconds of a step decoding one token.
    lone: Option<f64>,
    /// Seconds each further decoded token adds to a step.
    per_token: Option<f64>,
    /// Tokens the riders have earned and not spent.
    credit: f64,
}

impl Scheduler {
    /// Plans the next step for `wants`, at most `batch_tokens` tokens in all.
    pub fn plan(&mut self, wants: &[Want], batch_tokens: usize) -> Plan {
        let mut take = vec![0; wants.len()];
        // Sequences held (working or not) by each tenant with work.
        let mut held: BTreeMap<Tenant, usize> = BTreeMap::new();
        for w in wants {
            *held.entry(w.tenant).or_default() += 1;
        }
        let least = wants
            .iter()
            .filter(|w| w.has_work())
            .map(|w| held[&w.tenant])
            .min();
        let Some(least) = least else {
            return Plan {
                take,
                riders: 0,
                rode: 0,
            };
        };
        let light = |i: usize| held[&wants[i].tenant] == least;
        // Each group in turn: generating before reading, least recently stepped first.
        let mut order: Vec<usize> = (0..wants.len()).filter(|&i| wants[i].has_work()).collect();
        order.sort_by_key(|&i| (!light(i), !wants[i].next, wants[i].last_turn, i));
        let riders = order.iter().filter(|&&i| !light(i)).count();
        if riders == 0 {
            self.credit = 0.0;
        }
        let mut room = batch_tokens;
        let mut prefill = if wants.iter().any(|w| w.next) {
            PREFILL_CHUNK
        } else {
            batch_tokens
        };
        let mut rides = self.credit.floor() as usize;
        let mut rode = 0;
        for i in order {
            let n = if wants[i].next {
                1
            } else {
                wants[i].prompt_left.min(prefill)
            }
            .min(room)
            .min(if light(i) { usize::MAX } else { rides });
            if n == 0 {
                continue;
            }
            if !wants[i].next {
                prefill -= n;
            }
            if !light(i) {
                rides -= n;
                rode += n;
                self.credit -= n as f64;
            }
            take[i] = n;
            room -= n;
        }
        Plan { take, riders, rode }
    }

    /// Learns from a step that decoded `tokens` next tokens and `prompt` prompt tokens
    /// of `plan` in `took`, and gives the riders their share of the time the light
    /// tenants' work took in it.
    pub fn observe(&mut self, plan: &Plan, tokens: usize, prompt: usize, took: Duration) {
        let secs = took.as_secs_f64();
        let smooth = |old: Option<f64>, new: f64| {
            Some(old.map_or(new, |o| o + SMOOTHING * (new.min(OUTLIER * o) - o)))
        };
        if prompt == 0 && tokens == 1 {
            self.lone = smooth(self.lone, secs);
        } else if let (0, 2.., Some(lone)) = (prompt, tokens, self.lone) {
            let each = ((secs - lone) / (tokens - 1) as f64).max(0.0);
            self.per_token = smooth(self.per_token, each);
        }
        if plan.riders > 0 {
            // Until a cost is measured, assume the worst: a token costs a lone step.
            let cost = self.per_token.or(self.lone).unwrap_or(secs).max(1e-6);
            let light = (secs - plan.rode as f64 * cost).max(0.0);
            self.credit = (self.credit + RIDE_SHARE * light / cost).min(plan.riders as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOD: Tenant = Tenant::App([9; 32]);
    const STEP: Duration = Duration::from_millis(10);

    fn generating(tenant: Tenant, last_turn: u64) -> Want {
        Want {
            tenant,
            next: true,
            prompt_left: 0,
            last_turn,
        }
    }

    fn reading(tenant: Tenant, prompt_left: usize) -> Want {
        Want {
            tenant,
            next: false,
            prompt_left,
            last_turn: 0,
        }
    }

    /// A scheduler that has measured a lone step of [`STEP`] and `per_token` more per
    /// further token.
    fn measured(per_token: Duration) -> Scheduler {
        Scheduler {
            lone: Some(STEP.as_secs_f64()),
            per_token: Some(per_token.as_secs_f64()),
            credit: 0.0,
        }
    }

    /// Runs `steps` steps of `wants`, each taking [`STEP`] and `per_token` for every
    /// further token; tokens per sequence.
    fn run(s: &mut Scheduler, wants: &mut [Want], steps: u64, per_token: Duration) -> Vec<usize> {
        let mut tokens = vec![0; wants.len()];
        for turn in 1..=steps {
            let plan = s.plan(wants, 512);
            for (i, n) in plan.take.iter().enumerate() {
                if *n > 0 {
                    wants[i].last_turn = turn;
                    tokens[i] += n;
                }
            }
            let n: usize = plan.take.iter().sum();
            s.observe(&plan, n, 0, STEP + per_token * (n as u32 - 1));
        }
        tokens
    }

    #[test]
    fn one_tenant_gets_every_sequence_and_a_prompt_chunk() {
        let mut s = Scheduler::default();
        let wants = [
            generating(FLOOD, 3),
            reading(FLOOD, 500),
            generating(FLOOD, 1),
            reading(FLOOD, 10),
        ];
        assert_eq!(s.plan(&wants, 512).take, [1, PREFILL_CHUNK, 1, 0]);
        // Nothing generating: a prompt is read in the whole batch.
        assert_eq!(s.plan(&[reading(FLOOD, 900)], 512).take, [512]);
        // The batch bounds it all.
        assert_eq!(s.plan(&wants, 2).take, [1, 0, 1, 0]);
    }

    #[test]
    fn on_a_cpu_a_flood_beside_one_stream_rides_a_twentieth_of_the_time_in_turns() {
        // One more token costs half a lone step, as on a 2-core CPU.
        let mut s = measured(STEP / 2);
        let mut wants = vec![
            generating(FLOOD, 0),
            generating(FLOOD, 0),
            generating(FLOOD, 0),
            generating(Tenant::Local, 0),
        ];
        let tokens = run(&mut s, &mut wants, 300, STEP / 2);
        assert_eq!(tokens[3], 300, "the lone stream is in every step");
        // A twentieth of each 10 ms step, at 5 ms a token: a token every tenth step.
        let flood: usize = tokens[..3].iter().sum();
        assert!((28..=30).contains(&flood), "{tokens:?}");
        assert!(
            tokens[..3].iter().all(|t| t.abs_diff(flood / 3) <= 1),
            "in turns: {tokens:?}"
        );
    }

    #[test]
    fn on_a_gpu_a_flood_rides_every_step() {
        // One more token costs a hundredth of a lone step.
        let mut s = measured(STEP / 100);
        let mut wants = vec![
            generating(FLOOD, 0),
            generating(FLOOD, 0),
            generating(Tenant::Local, 0),
        ];
        let tokens = run(&mut s, &mut wants, 50, STEP / 100);
        assert_eq!(
            tokens,
            [49, 49, 50],
            "after the first step earned the rides"
        );
    }

    #[test]
    fn timings_teach_the_cost_of_a_token() {
        let mut s = Scheduler::default();
        let alone = Plan {
            take: vec![1],
            riders: 0,
            rode: 0,
        };
        s.observe(&alone, 1, 0, STEP);
        s.observe(&alone, 3, 0, STEP * 2);
        s.observe(&alone, 2, 40, STEP * 9); // a prompt chunk: not a decode cost
        assert_eq!(s.lone, Some(0.01));
        assert!((s.per_token.unwrap() - 0.005).abs() < 1e-9);
        assert_eq!(s.credit, 0.0, "no riders, no credit");
    }

    /// One preempted lone step does not make the next steps' tokens look free (it
    /// did: the lone estimate jumped past what two tokens took, and the cost of a token
    /// decayed to nothing, so riders rode every step).
    #[test]
    fn a_preempted_step_does_not_make_tokens_look_free() {
        let mut s = measured(STEP / 2);
        let plan = |n: usize| Plan {
            take: vec![1; n],
            riders: 0,
            rode: 0,
        };
        s.observe(&plan(1), 1, 0, STEP * 50);
        for _ in 0..30 {
            s.observe(&plan(2), 2, 0, STEP + STEP / 2);
        }
        let per_token = s.per_token.unwrap();
        assert!(per_token > STEP.as_secs_f64() / 4.0, "{per_token}");
    }

    #[test]
    fn the_lighter_tenant_reads_its_prompt_while_the_flood_waits_its_turn() {
        let mut s = measured(STEP / 2);
        let wants = [
            generating(FLOOD, 5),
            generating(FLOOD, 4),
            reading(FLOOD, 40),
            reading(Tenant::Local, 40),
        ];
        assert_eq!(s.plan(&wants, 512).take, [0, 0, 0, 40]);
        s.credit = 1.5;
        assert_eq!(s.plan(&wants, 512).take, [0, 1, 0, 40]);
        assert_eq!(s.credit, 0.5);
    }

    #[test]
    fn tenants_holding_as_many_share_alike() {
        let mut s = measured(STEP / 2);
        let a = Tenant::App([1; 32]);
        let wants = [
            generating(FLOOD, 2),
            generating(a, 1),
            generating(FLOOD, 2),
            generating(a, 1),
        ];
        assert_eq!(s.plan(&wants, 512).take, [1, 1, 1, 1]);
        // A paused sequence still counts as held: the other tenant is the light one.
        let wants = [
            generating(FLOOD, 2),
            Want {
                next: false,
                ..generating(FLOOD, 2)
            },
            generating(a, 1),
        ];
        assert_eq!(s.plan(&wants, 512).take, [0, 0, 1]);
    }

    #[test]
    fn nothing_to_do_plans_nothing() {
        let mut s = Scheduler::default();
        assert!(s.plan(&[], 512).take.is_empty());
        let idle = Want {
            next: false,
            ..generating(FLOOD, 0)
        };
        assert_eq!(s.plan(&[idle], 512).take, [0]);
    }
}
