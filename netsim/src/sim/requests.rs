//! Requests in the simulation: arrival, the app's choice of supplier, sessions and
//! streams, failover, giving up, and what each request's end records.

use relaymesh_protocol::metering::allowance;
use relaymesh_protocol::metering::compute_units::CuFormula;
use relaymesh_protocol::metering::flow::Window;

use super::*;

impl Sim {
    // ---- requests ----

    pub(super) fn arrival(&mut self) {
        self.arrivals_left -= 1;
        if self.arrivals_left > 0 {
            let gap = self.next_arrival_gap();
            self.schedule(self.now + gap, Ev::Arrival);
        }
        let app = self.rng.below(self.apps.len()) as u32;
        let mut x = self.rng.unit() * self.model_weights.iter().sum::<f64>();
        let mut model = 0;
        for (m, w) in self.model_weights.iter().enumerate() {
            if x < *w {
                model = m;
                break;
            }
            x -= w;
        }
        let load = &self.sc.load;
        let prompt_tokens = self.rng.lognormal(load.prompt_tokens).clamp(1.0, 32_768.0) as u32;
        let output_tokens =
            (self.rng.lognormal(load.output_tokens) as u32).clamp(1, load.max_output_tokens);
        if self.apps[app as usize].kind == AppKind::DoubleCommit {
            self.m.requests += 1;
            self.double_commit(app, model, prompt_tokens, output_tokens);
            return;
        }
        let candidates = self.rank_candidates(app, model);
        let honest = self.apps[app as usize].kind.wants_answers();
        self.counter += 1;
        let r = self.requests.insert(Request {
            app,
            id: self.counter,
            prompt_tokens,
            output_tokens,
            delivered: 0,
            arrived_us: self.now,
            first_token_us: None,
            prefill_us: 0,
            candidates,
            next: 0,
            attempts: 0,
            honest,
        });
        self.m.requests += 1;
        if honest {
            self.m.honest_requests += 1;
        }
        self.next_attempt(r);
    }

    /// Whether `app` can route to supplier `s` now: its ad has reached the app and not
    /// expired, it is not known to be excluded, and no dial to it has failed since.
    pub(crate) fn usable(&self, app: u32, s: u32) -> bool {
        let sup = &self.suppliers[s as usize];
        let Some(ad) = &sup.ad else {
            return false;
        };
        let now = self.now;
        ad.visible_us <= now
            && ad.expires_us > now
            && sup
                .excluded_us
                .is_none_or(|t| t + self.spread.typical_us > now)
            && self.apps[app as usize]
                .views
                .get(&s)
                .is_none_or(|v| v.dead_seq.is_none_or(|d| d < ad.seq))
    }

    /// The app's known suppliers of a model, topped up with random others where some
    /// became unusable, ranked by the protocol's routing score (the ad's figures,
    /// refined by the app's own measurements).
    pub(super) fn rank_candidates(&mut self, app: u32, model: usize) -> Vec<u32> {
        let pool = &self.by_model[model];
        let want = (self.sc.candidates as usize).min(pool.len());
        let mut known = self.apps[app as usize]
            .known
            .remove(&(model as u32))
            .unwrap_or_default();
        known.retain(|s| self.usable(app, *s));
        let mut tries = 0;
        while known.len() < want && tries < 4 * want {
            tries += 1;
            let s = pool[self.rng.below(pool.len())];
            if !known.contains(&s) && self.usable(app, s) {
                known.push(s);
            }
        }
        let now = self.now;
        let view_of = &self.apps[app as usize].views;
        let weights = self.weights;
        let usable = known.iter().filter_map(|&s| {
            let ad = self.suppliers[s as usize].ad.as_ref()?;
            let stats = match view_of.get(&s) {
                Some(v) => {
                    let mut own = v.stats;
                    own.decay_errors(now.saturating_sub(v.updated_us) / MS, &weights);
                    own.free_slots = ad.free_slots.into();
                    own
                }
                None => self.ad_stats(s, ad.free_slots),
            };
            Some((s, stats))
        });
        let ranked = rank(usable, None, &self.weights)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        self.apps[app as usize].known.insert(model as u32, known);
        ranked
    }

    /// What an app knows of a supplier from its ad alone: the routing score's inputs.
    pub(super) fn ad_stats(&self, s: u32, free_slots: u16) -> SupplierStats {
        let sup = &self.suppliers[s as usize];
        SupplierStats::from_ad(
            sup.ad_ttft_ms,
            (sup.speed * 1000.0) as u32,
            free_slots,
            sup.slots as u16,
            self.sc.mesh.price_per_cu,
        )
    }

    pub(super) fn next_attempt(&mut self, r: Id) {
        let max = if self.sc.failover {
            self.sc.max_attempts
        } else {
            1
        };
        let req = self.requests.get_mut(r).expect("live request");
        if req.attempts >= max || req.next >= req.candidates.len() {
            self.finish_request(r, false);
            return;
        }
        let s = req.candidates[req.next];
        req.next += 1;
        req.attempts += 1;
        let app_node = self.apps[req.app as usize].node;
        self.m.attempts += 1;
        let sup = &self.suppliers[s as usize];
        let a = self.attempts.insert(Attempt {
            request: r,
            supplier: s,
            incarnation: sup.incarnation,
            session: None,
            started_us: 0,
            first_token_us: 0,
            tokens: 0,
            plan: Plan::Done,
            cut: false,
            window: None,
        });
        if !sup.online {
            // A ghost: its ad outlived it. The dial times out.
            let t = (self.sc.network.dial_timeout_ms * MS as f64) as u64;
            self.schedule(self.now + t, Ev::GiveUp(a, Why::Dial));
            return;
        }
        let one_way = self.one_way(app_node, sup.node, 512);
        let lost = self.loss_delay(2 * one_way);
        self.schedule(self.now + one_way + lost, Ev::Accept(a));
    }

    pub(super) fn accept(&mut self, a: Id) {
        let at = self.attempts.get(a).expect("live attempt");
        let s = at.supplier;
        let sup = &self.suppliers[s as usize];
        let app_node = self.apps[self.requests.get(at.request).expect("live").app as usize].node;
        if !sup.online || sup.incarnation != at.incarnation {
            let t = (self.sc.network.dial_timeout_ms * MS as f64) as u64;
            self.schedule(self.now + t, Ev::GiveUp(a, Why::Dial));
            return;
        }
        let back = self.one_way(sup.node, app_node, 256);
        let app = self.requests.get(at.request).expect("live").app;
        let Some(window) = self.window(s, app) else {
            self.m.refused_debt += 1;
            self.schedule(self.now + back, Ev::GiveUp(a, Why::Busy));
            return;
        };
        let sup = &self.suppliers[s as usize];
        if sup.leaving || (sup.busy >= sup.slots && sup.queue.len() >= self.sc.gpu.queue as usize) {
            self.m.refused_busy += 1;
            self.schedule(self.now + back, Ev::GiveUp(a, Why::Busy));
            return;
        }
        // Admitted: the window counts against the app while the stream waits and runs,
        // as the node's stream ticket counts it.
        if !self.apps[app as usize].kind.wants_answers() {
            let w = Window {
                max_unacked: window,
                ..self.full_window()
            };
            self.risk(s, app).open(w);
            self.attempts.get_mut(a).expect("live attempt").window = Some(window);
        }
        let sup = &self.suppliers[s as usize];
        if sup.busy < sup.slots {
            self.start(a);
        } else {
            self.suppliers[s as usize].queue.push_back(a);
        }
    }

    /// The supplier takes the attempt into a slot: session, prefill, stream.
    pub(super) fn start(&mut self, a: Id) {
        let (r, s) = {
            let at = self.attempts.get(a).expect("live attempt");
            (at.request, at.supplier)
        };
        let req = self.requests.get(r).expect("live request");
        let app = req.app;
        let remaining = req.output_tokens - req.delivered;
        // A resumed request carries the partial answer as part of its prompt.
        let prompt = req.prompt_tokens + req.delivered;
        let (session, opened) = self.session_for(s, app, remaining);
        let sup = &mut self.suppliers[s as usize];
        sup.busy += 1;
        sup.active.push(a);
        let speed = sup.speed;
        let kind = sup.kind;
        let app_node = self.apps[app as usize].node;
        let sup_node = sup.node;
        let rtt = 2 * self.one_way(app_node, sup_node, 256);
        // Opening a session costs the countersignature's round trip.
        let open_cost = if opened { rtt } else { 0 };
        let prefill =
            (f64::from(prompt) / (speed * self.sc.gpu.prefill_factor) * SEC as f64) as u64;
        let first_token = self.now + open_cost + prefill;
        let k = self.sc.mesh.ack_every_tokens;
        let app_kind = self.apps[app as usize].kind;
        let (plan, produced) = if kind == SupplierKind::Garbage {
            (Plan::Garbage, remaining.min(k))
        } else if kind == SupplierKind::Silent
            && self.rng.chance(self.sc.adversaries.silent_per_request)
        {
            let upto = (self.rng.unit() * f64::from(remaining)) as u32;
            (Plan::Silent, upto)
        } else if app_kind == AppKind::StopAcking {
            let w = self.attempts.get(a).and_then(|at| at.window).unwrap_or(0);
            let acked = remaining.min(k);
            (Plan::AppStops { acked }, remaining.min(acked + w))
        } else if let Some(acked) = self.ack_pick_stop(app_kind, session, r, prompt, remaining) {
            let w = self.attempts.get(a).and_then(|at| at.window).unwrap_or(0);
            (Plan::AppStops { acked }, remaining.min(acked + w))
        } else {
            (Plan::Done, remaining)
        };
        let stream = (f64::from(produced) / speed * SEC as f64) as u64;
        let at = self.attempts.get_mut(a).expect("live attempt");
        at.session = Some(session);
        at.started_us = self.now;
        at.first_token_us = first_token;
        at.tokens = produced;
        at.plan = plan;
        let req = self.requests.get_mut(r).expect("live request");
        if req.first_token_us.is_none() && produced > 0 {
            let to_app = rtt / 2;
            req.first_token_us = Some(first_token + to_app);
            req.prefill_us = prefill;
        }
        self.schedule(first_token + stream, Ev::End(a));
        self.load_changed(s);
    }

    /// Stops an attempt's stream where the crash left it: meters what was acked.
    pub(super) fn cut(&mut self, a: Id) {
        let Some(at) = self.attempts.get_mut(a) else {
            return;
        };
        at.cut = true;
        let produced_by_now = if self.now <= at.first_token_us {
            0
        } else {
            let sup = &self.suppliers[at.supplier as usize];
            ((self.now - at.first_token_us) as f64 / SEC as f64 * sup.speed) as u32
        };
        let produced = produced_by_now.min(at.tokens);
        at.tokens = produced;
        self.meter_attempt(a, produced);
        let r = self.attempts.get(a).expect("live").request;
        if let Some(req) = self.requests.get_mut(r) {
            req.delivered += produced;
        }
    }

    pub(super) fn end(&mut self, a: Id) {
        let Some(at) = self.attempts.get(a) else {
            return;
        };
        if at.cut {
            return;
        }
        let (r, s, plan, tokens) = (at.request, at.supplier, at.plan, at.tokens);
        let acked = match plan {
            Plan::AppStops { acked } => tokens.min(acked),
            _ => tokens,
        };
        self.meter_attempt(a, acked);
        let app = self.requests.get(r).expect("live request").app;
        if !self.apps[app as usize].kind.wants_answers() {
            // What the app owes and paid, by the node's rule (the supplier's own formula
            // is the default one): tokens it left unacknowledged, and its prompt where
            // it took tokens and acknowledged none; a supplier's failure (garbage,
            // silence) is not its debt.
            let req = self.requests.get(r).expect("live request");
            let cu = CuFormula::default();
            let prompt_bytes = (req.prompt_tokens + req.delivered) * self.sc.load.bytes_per_token;
            let prompt_cu = cu.prompt_units(prompt_bytes);
            let left = matches!(plan, Plan::AppStops { .. });
            let owed = if self.sc.mesh.app_debt_limit {
                allowance::owed(&allowance::Ending {
                    clean: !left,
                    acked,
                    sent: tokens,
                    unacked: tokens.saturating_sub(acked),
                    ack_every: self.sc.mesh.ack_every_tokens,
                    queued_ms: 0,
                    prompt_bytes,
                    prompt_tokens: allowance::owed_tokens(&cu, prompt_cu),
                })
            } else {
                0
            };
            let paid = if acked > 0 {
                acked.saturating_add(allowance::paid_tokens(&cu, prompt_cu))
            } else {
                0
            };
            self.close_window(a);
            let now_ms = self.now / MS;
            self.risk(s, app).ended(paid, owed, now_ms);
        }
        let sup = &mut self.suppliers[s as usize];
        sup.busy -= 1;
        sup.active.retain(|x| *x != a);
        let next = sup.queue.pop_front();
        if let Some(n) = next {
            self.start(n);
        } else {
            self.load_changed(s);
        }
        self.maybe_go_offline(s);
        let req = self.requests.get_mut(r).expect("live request");
        req.delivered += tokens;
        let app = req.app;
        let app_node = self.apps[app as usize].node;
        let back = self.one_way(self.suppliers[s as usize].node, app_node, 256);
        match plan {
            Plan::Done => {
                // What the app saw: its request's trip, the wait, the first token's trip.
                let at = self.attempts.get(a).expect("live");
                let ttft_ms = (at.first_token_us - at.started_us + 2 * back) as f64 / MS as f64;
                let speed = self.suppliers[s as usize].speed;
                let weights = self.weights;
                let now = self.now;
                let view = self.view(app, s);
                view.stats.observe_ttft(ttft_ms, &weights);
                view.stats.observe_speed(speed, &weights);
                view.updated_us = now;
                self.attempts.remove(a);
                self.finish_request(r, true);
            }
            Plan::AppStops { .. } => {
                self.attempts.remove(a);
                self.m.abandoned_by_app += 1;
                let req = self.requests.remove(r).expect("live request");
                let unacked = tokens.saturating_sub(acked);
                self.m.free_tokens += u64::from(unacked);
                // With no ack at all, the prompt's prefill went unpaid too.
                let prompt = if acked == 0 {
                    req.prompt_tokens + req.delivered - tokens
                } else {
                    0
                };
                self.took_unacked(app, s, unacked, prompt);
            }
            Plan::Garbage => {
                self.m.garbage_detected += 1;
                self.schedule(self.now + back, Ev::GiveUp(a, Why::Garbage));
            }
            Plan::Silent => {
                let stall = (self.sc.network.stall_timeout_ms * MS as f64) as u64;
                self.schedule(self.now + back + stall, Ev::GiveUp(a, Why::Stall));
            }
        }
    }

    /// The window supplier `s` gives `app`'s next stream, by the node's own rule
    /// (`relaymesh_protocol::metering::allowance`): W where the tokens it has at risk
    /// here (those left unacknowledged in the last 10 minutes) and W fit its allowance,
    /// K where only K does, `None` where not even that (refused). The allowance is 2K,
    /// or a sixteenth of the tokens it acknowledged here. Without
    /// `mesh.stranger_window`: W, refused once it owes 2W. The windows of its streams
    /// admitted here and not yet ended count as at risk.
    pub(crate) fn window(&mut self, s: u32, app: u32) -> Option<u32> {
        let full = self.full_window();
        if !self.sc.mesh.app_debt_limit {
            return Some(full.max_unacked);
        }
        let stranger_window = self.sc.mesh.stranger_window;
        let now_ms = self.now / MS;
        let stranger = AppRisk::default();
        let risk = match self.suppliers[s as usize].risk.get_mut(&app) {
            Some(risk) => {
                risk.prune(now_ms);
                &*risk
            }
            None => &stranger,
        };
        if !stranger_window {
            let owed = u64::from(risk.owed());
            return (owed < 2 * u64::from(full.max_unacked)).then_some(full.max_unacked);
        }
        risk.window(full).map(|w| w.max_unacked)
    }

    /// The mesh's ack window.
    fn full_window(&self) -> Window {
        Window {
            ack_every: self.sc.mesh.ack_every_tokens,
            max_unacked: self.sc.mesh.max_unacked_tokens,
        }
    }

    /// What supplier `s` remembers of `app`, pruned to now.
    fn risk(&mut self, s: u32, app: u32) -> &mut AppRisk {
        let now_ms = self.now / MS;
        let risk = self.suppliers[s as usize].risk.entry(app).or_default();
        risk.prune(now_ms);
        risk
    }

    /// Attempt `a`'s window stops counting against its app (once; not at all where
    /// its supplier has crashed since and forgotten it).
    fn close_window(&mut self, a: Id) {
        let Some(at) = self.attempts.get_mut(a) else {
            return;
        };
        let Some(w) = at.window.take() else {
            return;
        };
        let (s, inc, r) = (at.supplier, at.incarnation, at.request);
        if self.suppliers[s as usize].incarnation != inc {
            return;
        }
        let Some(app) = self.requests.get(r).map(|q| q.app) else {
            return;
        };
        let full = self.full_window();
        if let Some(risk) = self.suppliers[s as usize].risk.get_mut(&app) {
            risk.close(Window {
                max_unacked: w,
                ..full
            });
        }
    }

    pub(super) fn view(&mut self, app: u32, s: u32) -> &mut View {
        let stats = self.ad_stats(s, self.suppliers[s as usize].slots as u16);
        self.apps[app as usize]
            .views
            .entry(s)
            .or_insert_with(|| View {
                stats,
                updated_us: 0,
                dead_seq: None,
            })
    }

    pub(super) fn give_up(&mut self, a: Id, why: Why) {
        self.close_window(a);
        let Some(at) = self.attempts.remove(a) else {
            return;
        };
        let s = at.supplier;
        let r = at.request;
        // A queued attempt whose supplier has since freed a slot never started.
        self.suppliers[s as usize].queue.retain(|x| *x != a);
        match why {
            Why::Dial => self.m.failed_dials += 1,
            Why::Stall => self.m.stalls += 1,
            Why::Garbage | Why::Busy => {}
        }
        let Some(req) = self.requests.get(r) else {
            return;
        };
        let app = req.app;
        let seq = self.suppliers[s as usize].ad.as_ref().map(|ad| ad.seq);
        let now = self.now;
        let view = self.view(app, s);
        if why != Why::Busy {
            view.stats.observe_error();
            view.updated_us = now;
        }
        if why == Why::Dial {
            view.dead_seq = seq;
        }
        if self
            .requests
            .get(r)
            .is_some_and(|q| q.delivered >= q.output_tokens)
        {
            self.finish_request(r, true);
        } else {
            self.next_attempt(r);
        }
    }

    pub(super) fn finish_request(&mut self, r: Id, served: bool) {
        let Some(req) = self.requests.remove(r) else {
            return;
        };
        if !req.honest {
            return;
        }
        if served {
            self.m.honest_served += 1;
            if req.attempts > 1 {
                self.m.served_after_failover += 1;
            }
            if let Some(first) = req.first_token_us {
                let ttft = first.saturating_sub(req.arrived_us);
                self.m.ttft_ms.push(ttft as f64 / MS as f64);
                self.m
                    .ttft_overhead_ms
                    .push(ttft.saturating_sub(req.prefill_us) as f64 / MS as f64);
            }
        } else {
            self.m.honest_failed += 1;
        }
    }
}
