//! What a supplier checks before it serves: the proposed or resumed terms against its
//! models, its clock and the mesh's bounds, and the app's escrow.

use super::*;

/// Why a proposal cannot be countersigned, if it cannot. Every term the app chose is
/// checked against what this supplier offers: its start against this supplier's clock
/// (a session dated into a frozen epoch could never be claimed, one dated elsewhere
/// would count in another epoch), τ against this supplier's rule (τ is the supplier's:
/// the app bears none of a session's variance or leaf cap), the token cap against the
/// model's tokens, and the escrow against the app's credit.
pub(super) fn check_proposal(
    proposal: &SessionProposal,
    ctx: &SupplierContext,
) -> Option<(RefuseCode, String)> {
    let terms = &proposal.body;
    let now = now_ms();
    if terms.supplier != ctx.key.public_key() {
        return Some((
            RefuseCode::Terms,
            "the terms name another supplier".to_string(),
        ));
    }
    if proposal.verify(&terms.app, &Ed25519Verifier).is_err() {
        return Some((
            RefuseCode::Invalid,
            "the app's signature on the terms is invalid".into(),
        ));
    }
    let tau = ctx.settlement.as_ref().and_then(|s| s.tau());
    if let Err(why) = timing_fits(terms, now, tau, &ctx.params) {
        return Some((RefuseCode::Terms, why));
    }
    if let Some(problem) = check_model(terms, ctx) {
        return Some(problem);
    }
    if let Some(Err(why)) = ctx.settlement.as_ref().map(|s| s.admit_escrow(terms)) {
        return Some((RefuseCode::Balance, why));
    }
    if let Err(why) = ctx.limits.new_session(&terms.app) {
        ctx.metrics.limited("app_sessions");
        return Some((RefuseCode::Busy, why));
    }
    None
}

pub(super) fn check_model(
    terms: &SessionOpen,
    ctx: &SupplierContext,
) -> Option<(RefuseCode, String)> {
    let mut why = "no model served here has that digest".to_string();
    for model in ctx.models.iter() {
        if model_digest(model) != terms.model_digest {
            continue;
        }
        let info = model.backend.info();
        let served = Served {
            price_per_cu: model.price_per_cu,
            manifest: info.manifest.as_ref(),
            max_token_bytes: info.max_token_bytes,
        };
        match terms_fit(terms, &served, &ctx.params) {
            Ok(()) => return None,
            Err(e) => why = e,
        }
    }
    Some((RefuseCode::Terms, why))
}

/// Whether the terms' timing and threshold fit this supplier, at `now` and with its τ
/// rule at `tau`:
/// - the session lasts at least [`MIN_SESSION_MS`] (or the mesh's longest): a shorter
///   one would only make claims (each gossiped to the whole mesh) for what a longer
///   one claims at once;
/// - it starts within the mesh's clock skew of now: a session dated into a frozen epoch
///   could never be claimed (served for free), one dated elsewhere would count in
///   another epoch;
/// - τ is the supplier's to set (the supplier bears a session's variance and its leaf
///   cap): within a factor of two of its rule's value, since the ad the app read may
///   be minutes old.
pub(super) fn timing_fits(
    terms: &SessionOpen,
    now: u64,
    tau: Option<u64>,
    params: &MeshParams,
) -> Result<(), String> {
    let shortest = params.max_session_ms.min(MIN_SESSION_MS);
    if terms.max_duration_ms < shortest {
        return Err(format!("sessions here last at least {shortest} ms"));
    }
    let skew = params.max_clock_skew_ms;
    if terms.start_ms.abs_diff(now) > skew {
        return Err(format!(
            "the session starts at {} but this supplier's clock says {now} (more than {skew} ms apart): check the clock",
            terms.start_ms
        ));
    }
    if let Some(tau) = tau {
        if terms.tau < tau / 2 || terms.tau > tau.saturating_mul(2) {
            return Err(format!(
                "tau is this supplier's to set: it is {tau} now, not {}",
                terms.tau
            ));
        }
    }
    Ok(())
}

/// How this supplier serves one model: what terms for it must meet.
pub(super) struct Served<'a> {
    pub(super) price_per_cu: u64,
    pub(super) manifest: Option<&'a relaymesh_protocol::messages::manifest::SignedManifest>,
    pub(super) max_token_bytes: u32,
}

/// Whether terms for a model fit how it is served here. Every one of these terms is
/// the app's to sign, so each is checked against the supplier's own:
/// - the price, at least the supplier's;
/// - the CU formula, no factor below the supplier's (zero factors would weigh every
///   receipt at nothing, and nothing would ever be mined);
/// - the manifest, exactly the one the supplier advertises, or none if it advertises
///   none (one naming the app itself as the Source at 100% would route the supplier's
///   pay back to the app);
/// - the token cap, at least one whole character (4 bytes) and the model's longest
///   token where the mesh allows it (a smaller cap would split tokens into more frames
///   than the app's ack chain has links for).
pub(super) fn terms_fit(
    terms: &SessionOpen,
    served: &Served,
    params: &MeshParams,
) -> Result<(), String> {
    if terms.price_per_cu < served.price_per_cu {
        return Err(format!(
            "the price here is {} per CU, not {}",
            served.price_per_cu, terms.price_per_cu
        ));
    }
    let cu = crate::infer::supplier_cu(params);
    if terms.cu.prompt_per_byte < cu.prompt_per_byte
        || terms.cu.output_per_byte < cu.output_per_byte
        || terms.cu.token_bytes < cu.token_bytes
        || terms.cu.embed_per_byte < cu.embed_per_byte
    {
        return Err(format!(
            "the CU formula here is {} per prompt byte and {} per output byte, paid for up \
             to {} bytes a token, and {} per embedding input byte",
            cu.prompt_per_byte, cu.output_per_byte, cu.token_bytes, cu.embed_per_byte
        ));
    }
    if terms.manifest.as_ref() != served.manifest {
        return Err("the terms pin another manifest than the one served here".into());
    }
    let need = served.max_token_bytes.min(params.max_token_bytes).max(4);
    if terms.max_token_bytes < need {
        return Err(format!(
            "the session caps tokens at {} bytes; this model's reach {}",
            terms.max_token_bytes, served.max_token_bytes
        ));
    }
    Ok(())
}

/// The CUs of a session's escrow this supplier serves at most (see
/// [`crate::infer::escrow::usable_cu`]) and those acknowledged already; `None`: unbounded, in a
/// mesh without credit or where nothing is metered here.
pub(super) fn escrow_use(session: &SignedSessionOpen, ctx: &SupplierContext) -> Option<(u64, u64)> {
    if !ctx.params.has_credit() {
        return None;
    }
    let miner = ctx.miner.as_ref()?;
    let spent = miner
        .session_counters(&session.session_key())
        .map_or(0, |c| c.cu);
    Some((crate::infer::escrow::usable_cu(&session.body), spent))
}

/// Why a session the app resumes cannot go on, if it cannot: it must be ours, signed by
/// both, still running, and for a model served here at that price.
pub(super) fn check_resumed(
    session: &SignedSessionOpen,
    ctx: &SupplierContext,
) -> Option<(RefuseCode, String)> {
    let terms = &session.body;
    if terms.supplier != ctx.key.public_key() {
        return Some((
            RefuseCode::Terms,
            "the session is another supplier's".into(),
        ));
    }
    if let Err(e) = session.validate(&ctx.params, &Ed25519Verifier) {
        return Some((
            RefuseCode::Invalid,
            format!("the session does not verify: {e}"),
        ));
    }
    if now_ms() >= terms.end_ms() {
        return Some((RefuseCode::Terms, "the session has ended".into()));
    }
    if let Some(miner) = &ctx.miner {
        if miner.nearly_full(&session.session_key()).unwrap_or(false) {
            return Some((
                RefuseCode::Terms,
                "the session's claim is nearly full: open a new session".into(),
            ));
        }
    }
    if let Some(Err(why)) = ctx.settlement.as_ref().map(|s| s.admit_resume(terms)) {
        return Some((RefuseCode::Balance, why));
    }
    // Nine tenths of the usable escrow spent: past that, a request could not be paid.
    if let Some((usable, spent)) = escrow_use(session, ctx) {
        if u128::from(spent) * 10 >= u128::from(usable) * 9 {
            return Some((
                RefuseCode::Terms,
                "the session's escrow is nearly spent: open a new session".into(),
            ));
        }
    }
    check_model(terms, ctx)
}

/// The most bytes a frame of output carries in a session of `terms` from a backend of
/// `kind`. A frame is a token to the ack rules, paid for at most `cu.token_bytes`
/// bytes on average over its increment. The embedded engine's pieces are one token
/// each (the cap leaves 0.3% of SmolLM2's bytes unpaid), so they go out
/// whole up to the session's cap; an upstream's may hold several (a speculative
/// decoder's do), so they go out in frames of at most what one is paid for, and none
/// of their text goes unpaid.
pub(super) fn frame_cap(terms: &SessionOpen, kind: &str) -> usize {
    let cap = if kind == "embedded" {
        terms.max_token_bytes
    } else {
        terms.max_token_bytes.min(terms.cu.token_bytes)
    };
    cap.max(1) as usize
}

/// Splits text into frames of at most `cap` bytes (the session's per-token cap, at
/// most `MAX_TOKEN_BYTES`) on character boundaries; a character longer than the cap
/// (4 bytes at most) gets a frame of its own.
pub(super) fn token_frames(text: &str, cap: usize) -> Vec<&str> {
    let cap = cap.clamp(4, MAX_TOKEN_BYTES);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(cap);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::identity::signed::Signed;
    use relaymesh_protocol::messages::manifest::ModelManifest;

    /// An upstream's piece of several tokens goes out in frames each paid in full;
    /// the embedded engine's one-token pieces go out whole.
    #[test]
    fn an_upstreams_text_is_framed_so_every_byte_is_paid() {
        let mut terms = crate::testkit::terms_for_tests();
        terms.max_token_bytes = 32;
        let piece = " internationalization of ünïcode";
        let frames = token_frames(piece, frame_cap(&terms, "openai"));
        assert_eq!(frames.concat(), piece);
        let tokens = u16::try_from(frames.len()).unwrap();
        let bytes = piece.len() as u32;
        assert_eq!(
            terms.cu.increment_units(0, bytes, tokens),
            terms.cu.output_units(0, bytes),
            "{frames:?}"
        );
        assert_eq!(frame_cap(&terms, "embedded"), 32);
        assert_eq!(token_frames(piece, 32).len(), 2);
    }

    fn served() -> Served<'static> {
        Served {
            price_per_cu: 2,
            manifest: None,
            max_token_bytes: 16,
        }
    }

    #[test]
    fn terms_that_fit_are_admitted() {
        let mut terms = crate::testkit::terms_for_tests();
        let params = crate::config::named_mesh("testkit");
        terms.price_per_cu = 2;
        terms.max_token_bytes = 16;
        assert_eq!(terms_fit(&terms, &served(), &params), Ok(()));
    }

    /// Hole found by review: the app writes the terms, and nothing compared their
    /// manifest with the supplier's, so an app could sign one naming itself as the
    /// Source at 100% and every settled claim paid the app back. Failed before the
    /// supplier required its own manifest.
    #[test]
    fn a_manifest_other_than_the_suppliers_is_refused() {
        let params = crate::config::named_mesh("testkit");
        let app = relaymesh_protocol::Keypair::from_secret([1; 32]);
        let mut terms = crate::testkit::terms_for_tests();
        terms.price_per_cu = 2;
        terms.max_token_bytes = 16;
        terms.manifest = Some(Signed::sign(
            ModelManifest {
                version: relaymesh_protocol::PROTOCOL_VERSION,
                name: relaymesh_protocol::BoundedString::new("m").unwrap(),
                gguf_digest: terms.model_digest,
                size_bytes: 1,
                licence: Default::default(),
                royalty_ppm: 1_000_000,
                source: relaymesh_protocol::Signer::public_key(&app),
            },
            &app,
        ));
        let why = terms_fit(&terms, &served(), &params).unwrap_err();
        assert!(why.contains("manifest"), "{why}");
    }

    /// Holes 4 and 9: the supplier never compared the session's start with its clock
    /// (a session dated into a frozen epoch was served and could never be claimed), nor
    /// τ with its own rule (the app picked it). Failed before these checks.
    #[test]
    fn a_start_off_the_clock_a_tau_not_ours_or_a_short_session_is_refused() {
        let params = crate::config::named_mesh("testkit");
        let now = 1_750_000_000_000;
        let mut terms = crate::testkit::terms_for_tests();
        terms.start_ms = now;
        terms.tau = 1_000;
        terms.max_duration_ms = params.max_session_ms;
        assert_eq!(timing_fits(&terms, now, Some(1_000), &params), Ok(()));
        let mut backdated = terms.clone();
        backdated.start_ms = now - 10 * params.epoch_ms;
        let mut low_tau = terms.clone();
        low_tau.tau = 100;
        let mut short = terms.clone();
        short.max_duration_ms = 1_000;
        for bad in [backdated, low_tau, short] {
            assert!(timing_fits(&bad, now, Some(1_000), &params).is_err());
        }
    }

    /// The app's other choices: a lower price, CU factors of zero, a cap that splits
    /// the model's tokens.
    #[test]
    fn a_price_cu_formula_or_token_cap_below_the_suppliers_is_refused() {
        let params = crate::config::named_mesh("testkit");
        let mut terms = crate::testkit::terms_for_tests();
        terms.price_per_cu = 2;
        terms.max_token_bytes = 16;
        let mut cheap = terms.clone();
        cheap.price_per_cu = 1;
        let mut weightless = terms.clone();
        weightless.cu.output_per_byte = 0;
        let mut narrow = terms.clone();
        narrow.max_token_bytes = 8;
        // Tokens paid for fewer bytes than the supplier's rule.
        let mut stingy = terms.clone();
        stingy.cu.token_bytes = 4;
        // Embeddings for nothing (version 6).
        let mut free_vectors = terms.clone();
        free_vectors.cu.embed_per_byte = 0;
        for bad in [cheap, weightless, narrow, stingy, free_vectors] {
            assert!(terms_fit(&bad, &served(), &params).is_err());
        }
    }
}
