//! The embedded engine's continuous batching on the real test model: many streams in
//! one decode loop, each answered on its own; cancelling frees the slot; sampling
//! options still do what they say. Needs the test model (`scripts/fetch-model`).

mod support;

use std::time::Duration;

use relaymesh_node::backend::embedded::EmbeddedBackend;
use relaymesh_node::backend::{
    Backend, BackendError, ChatMessage, Finish, FinishReason, GenEvent, GenRequest, Generation,
    Prompt, Role, Sampling, Tenant, TokenLogprob,
};

fn chat(question: &str, sampling: Sampling) -> GenRequest {
    GenRequest {
        prompt: Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: question.into(),
        }]),
        sampling,
        tenant: Tenant::Local,
    }
}

fn greedy(max_tokens: u32) -> Sampling {
    Sampling {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Sampling::default()
    }
}

/// Reads a generation to its end: the text and how it finished.
async fn collect(g: Generation) -> (String, FinishReason, u32) {
    let (text, f) = finish(g).await;
    (text, f.reason, f.completion_tokens)
}

/// Reads a generation to its end: the text and its [`Finish`].
async fn finish(mut g: Generation) -> (String, Finish) {
    let mut text = String::new();
    loop {
        match g.next().await.expect("a Done before the end") {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done(f) => return (text, f),
            GenEvent::Failed(e) => panic!("generation failed: {e}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_concurrent_greedy_streams_give_the_same_text_as_one_alone() {
    let backend = support::smollm(8, 8);
    let question = "Name three colours of the rainbow.";
    let (alone, _, _) = collect(backend.generate(chat(question, greedy(40))).await.unwrap()).await;
    assert!(!alone.is_empty());
    // Started together, so they share decode steps; a different question in the mix
    // must get its own answer, not a neighbour's.
    let mut streams = Vec::new();
    for i in 0..8 {
        let q = if i == 3 {
            "What is the capital of France?"
        } else {
            question
        };
        streams.push(backend.generate(chat(q, greedy(40))).await.unwrap());
    }
    assert_eq!(backend.slots(), (0, 8), "all eight run at once");
    let answers = futures::future::join_all(streams.into_iter().map(collect)).await;
    for (i, (text, _, tokens)) in answers.iter().enumerate() {
        assert!(*tokens > 0);
        if i == 3 {
            assert!(text.contains("Paris"), "{text}");
        } else {
            assert_eq!(text, &alone, "stream {i}");
        }
    }
    support::wait_for("the slots to be free", Duration::from_secs(10), || async {
        (backend.slots() == (8, 8)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_stream_mid_answer_frees_its_slot_for_the_next_request() {
    let backend = support::smollm(1, 1);
    let mut first = backend
        .generate(chat("Tell me a long story about a dragon.", greedy(400)))
        .await
        .unwrap();
    // A few pieces in, the client goes away.
    for _ in 0..3 {
        assert!(matches!(first.next().await, Some(GenEvent::Text(_))));
    }
    assert_eq!(backend.slots(), (0, 1));
    drop(first);
    // The next request gets the slot (it would wait in the queue otherwise) and a
    // whole, clean answer.
    let next = tokio::time::timeout(
        Duration::from_secs(30),
        backend.generate(chat("What is the capital of France?", greedy(16))),
    )
    .await
    .expect("the slot was freed")
    .unwrap();
    let (text, _, _) = collect(next).await;
    assert!(text.contains("Paris"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_does_not_hold_up_the_other_streams() {
    let backend = support::smollm(2, 2);
    // Never read: its channel fills and its sequence pauses.
    let _stalled = backend
        .generate(chat("Tell me a long story.", greedy(500)))
        .await
        .unwrap();
    let other = backend
        .generate(chat("What is the capital of France?", greedy(16)))
        .await
        .unwrap();
    let (text, _, _) = tokio::time::timeout(Duration::from_secs(60), collect(other))
        .await
        .expect("the other stream finishes while the first waits for its reader");
    assert!(text.contains("Paris"), "{text}");
}

/// An app holding every slot (a flood, or a heavy user) neither keeps another app out
/// nor drags it to its own batch's pace: the other gets the spare place, and in each
/// decode step the flood adds one token beside the other's one, its streams in turns.
///
/// What is compared is what each made while the other streamed, not which finished
/// first: the flood's streams are under way before the other comes, and on a loaded
/// machine they could be nearly done by then (a CI run saw a flood stream finish
/// first). The test runs alone (`.config/nextest.toml`): the rule learns a token's
/// cost from step timings.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_holding_every_slot_neither_keeps_another_out_nor_sets_its_pace() {
    use futures::FutureExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let backend = support::smollm(2, 0);
    let flood = Tenant::App([7; 32]);
    let ask = |tenant| GenRequest {
        tenant,
        ..chat("Count from 1 to 50, one number per line.", greedy(40))
    };
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut g = backend.generate(ask(flood)).await.unwrap();
        // Under way before the next app comes.
        assert!(matches!(g.next().await, Some(GenEvent::Text(_))));
        streams.push(g);
    }
    assert!(
        matches!(
            backend.generate(ask(flood)).await,
            Err(BackendError::Busy { .. })
        ),
        "the flood holds every slot and gets no more"
    );
    let other = backend
        .generate(ask(Tenant::App([8; 32])))
        .await
        .expect("an app holding no slot gets the spare");
    // What the flood made before the other came is in its streams' buffers: read it
    // now, then count what it makes while the other streams.
    let during: Vec<Arc<AtomicU32>> = (0..2).map(|_| Arc::default()).collect();
    let mut readers = Vec::new();
    for (mut g, made) in streams.into_iter().zip(&during) {
        while let Some(Some(event)) = g.next().now_or_never() {
            if let GenEvent::Done(_) = event {
                panic!("a flood stream finished before the other app came");
            }
        }
        let made = made.clone();
        readers.push(tokio::spawn(async move {
            loop {
                match g.next().await.expect("a Done before the end") {
                    GenEvent::Text(_) => {
                        made.fetch_add(1, Ordering::SeqCst);
                    }
                    GenEvent::Done(f) => return f.completion_tokens,
                    GenEvent::Failed(e) => panic!("generation failed: {e}"),
                    _ => {}
                }
            }
        }));
    }
    let (_, _, tokens) = collect(other).await;
    let flood_during: u32 = during.iter().map(|n| n.load(Ordering::SeqCst)).sum();
    assert!(tokens > 10, "a real answer: {tokens} tokens");
    // Without the turns the flood's two streams are in every step (twice the other's
    // tokens and more); with them, on a quiet CPU, a token every tenth step. The rule
    // learns a token's cost from step timings, which a busy machine blurs (a CI run saw
    // 25 against 20), so the bound is what fails without the turns.
    assert!(
        2 * flood_during < 3 * tokens,
        "while the other app streamed {tokens} tokens the flood's two streams made {flood_during}: it set the pace"
    );
    for reader in readers {
        assert_eq!(reader.await.unwrap(), tokens, "the same greedy answer");
    }
}

/// A conversation's next turn reads only what is new: the KV cells of the tenant's
/// last request are reused, and the answer is what it would be without them. Another
/// tenant's cells never are (the time to its first token would tell what was asked).
#[tokio::test(flavor = "multi_thread")]
async fn a_next_turn_reads_only_what_is_new_and_never_from_another_tenants_cache() {
    let backend = support::smollm(1, 1);
    let turn = |role, content: &str| ChatMessage {
        role,
        content: content.into(),
    };
    // A greedy answer to `messages` asked by `tenant`, and how it finished.
    async fn ask(
        backend: &EmbeddedBackend,
        tenant: Tenant,
        messages: &[ChatMessage],
    ) -> (String, Finish) {
        let request = GenRequest {
            prompt: Prompt::Chat(messages.to_vec()),
            sampling: greedy(24),
            tenant,
        };
        finish(backend.generate(request).await.unwrap()).await
    }
    let question = vec![turn(Role::User, "What is the capital of France?")];
    let (answer, first) = ask(&backend, Tenant::Local, &question).await;
    assert_eq!(first.cached_tokens, 0);
    // The same again: all but the prompt's last token come from the cache.
    let (again, same) = ask(&backend, Tenant::Local, &question).await;
    assert_eq!(
        (again.as_str(), same.cached_tokens),
        (answer.as_str(), first.prompt_tokens - 1)
    );
    // Another app asking the same reads it all, and gets the same answer.
    let (theirs, other) = ask(&backend, Tenant::App([5; 32]), &question).await;
    assert_eq!((theirs.as_str(), other.cached_tokens), (answer.as_str(), 0));
    // The next turn: the first question and the answer are not read again.
    let mut next = question;
    next.push(turn(Role::Assistant, &answer));
    next.push(turn(Role::User, "And of Italy?"));
    let (follow, later) = ask(&backend, Tenant::Local, &next).await;
    assert!(
        later.cached_tokens >= first.prompt_tokens,
        "{later:?} after {first:?}"
    );
    assert!(later.prompt_tokens > later.cached_tokens);
    // Read whole by a fresh engine, the same turn gives the same answer.
    let (whole, read) = ask(&support::smollm(1, 1), Tenant::Local, &next).await;
    assert_eq!((follow, read.cached_tokens), (whole, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_options_are_honoured() {
    let backend = support::smollm(4, 4);
    let q = "Write a sentence about the sea.";
    // max_tokens ends with Length.
    let (_, reason, tokens) = collect(backend.generate(chat(q, greedy(5))).await.unwrap()).await;
    assert_eq!((reason, tokens), (FinishReason::Length, 5));
    // The same seed gives the same text; the stop string is not returned.
    let seeded = |seed| Sampling {
        temperature: Some(1.0),
        top_p: Some(0.9),
        top_k: Some(40),
        seed: Some(seed),
        max_tokens: Some(24),
        ..Sampling::default()
    };
    let a = backend.generate(chat(q, seeded(7))).await.unwrap();
    let b = backend.generate(chat(q, seeded(7))).await.unwrap();
    let (a, b) = futures::join!(collect(a), collect(b));
    assert_eq!(a.0, b.0);
    let (alone, _, _) = collect(backend.generate(chat(q, greedy(24))).await.unwrap()).await;
    let cut = alone.split(' ').nth(2).expect("a few words").to_owned();
    let stopped = Sampling {
        stop: vec![cut.clone()],
        ..greedy(24)
    };
    let (text, reason, _) = collect(backend.generate(chat(q, stopped)).await.unwrap()).await;
    assert_eq!(reason, FinishReason::Stop);
    assert!(
        !text.contains(&cut) && alone.starts_with(&text),
        "{text:?} / {alone:?}"
    );
    // Bad values are refused before a slot is taken.
    let bad = Sampling {
        temperature: Some(-1.0),
        ..Sampling::default()
    };
    assert!(matches!(
        backend.generate(chat(q, bad)).await.err(),
        Some(BackendError::Invalid(_))
    ));
}

/// A schema through references, `levels` deep, each level two different alternatives
/// (a list, and a list of at most 99) of the next: 2^levels ways to read one text of
/// `levels` nested lists, in a few kilobytes.
fn ambiguous_schema(levels: usize) -> String {
    let defs: Vec<String> = (0..levels)
        .map(|i| {
            let items = format!(r##"{{"$ref":"#/$defs/d{}"}}"##, i + 1);
            format!(
                r#""d{i}":{{"anyOf":[{{"type":"array","items":{items},"minItems":1}},{{"type":"array","items":{items},"minItems":1,"maxItems":99}}]}}"#
            )
        })
        .chain([format!(r#""d{levels}":{{"type":"string"}}"#)])
        .collect();
    format!(
        r##"{{"$ref":"#/$defs/d0","$defs":{{{}}}}}"##,
        defs.join(",")
    )
}

/// An output format constrains the answer: it parses under its schema. A schema whose
/// alternatives multiply llama.cpp's grammar stacks (twenty levels of two through
/// references, a million ways to read twenty nested lists, in 3 KB) is refused before
/// it reaches the one decode thread every stream shares, and the engine goes on
/// serving. Without the bound the engine took it, and its decode thread (every stream
/// of the model) was still stuck in the grammar two minutes later.
#[tokio::test(flavor = "multi_thread")]
async fn output_formats_shape_answers_and_ambiguous_schemas_are_refused() {
    use relaymesh_node::backend::Format;
    let backend = support::smollm(2, 2);
    let mut shaped = greedy(64);
    shaped.format = Some(Format::JsonSchema(
        r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}"#
            .into(),
    ));
    let (text, reason, _) = collect(
        backend
            .generate(chat("Name the capital of France.", shaped))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reason, FinishReason::Stop, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).expect("the answer parses");
    assert!(value["city"].is_string(), "{text}");

    let mut ambiguous = greedy(64);
    ambiguous.format = Some(Format::JsonSchema(ambiguous_schema(20)));
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        match backend.generate(chat("Say a word.", ambiguous)).await {
            Ok(g) => Ok(collect(g).await),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("the engine answered within two minutes");
    match outcome {
        Err(BackendError::Invalid(why)) => assert!(why.contains("alternatives"), "{why}"),
        other => panic!("an ambiguous schema was taken: {other:?}"),
    }
    let (after, _, _) = collect(backend.generate(chat("Say hi.", greedy(8))).await.unwrap()).await;
    assert!(!after.is_empty());
}

/// A schema that no text meets (a pattern of a reversed range, `[b-a]`; `minimum` above
/// `maximum` did the same, and is now refused before) compiles to a grammar that allows
/// no token. llama.cpp's own sampling then aborted the whole process, every model and
/// stream with it; the answer now ends with an error, and the engine goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_that_allows_nothing_ends_its_answer_not_the_node() {
    use relaymesh_node::backend::Format;
    let backend = support::smollm(2, 2);
    let mut impossible = greedy(16);
    impossible.format = Some(Format::JsonSchema(
        r#"{"type":"string","pattern":"^[b-a]$"}"#.into(),
    ));
    let mut g = backend
        .generate(chat("Pick a number.", impossible))
        .await
        .unwrap();
    let failed = loop {
        match g.next().await.expect("an end") {
            GenEvent::Text(_) => {}
            GenEvent::Done(f) => panic!("finished: {f:?}"),
            GenEvent::Failed(why) => break why,
            _ => {}
        }
    };
    assert!(failed.contains("allows no next token"), "{failed}");
    let (after, _, _) = collect(backend.generate(chat("Say hi.", greedy(8))).await.unwrap()).await;
    assert!(!after.is_empty());
}

/// Asks `question` greedily for `max` tokens with 3 alternatives per token, stopping
/// at `stop`: the text's bytes, the tokens told, and how it finished; checks that
/// log probabilities come before the text of their tokens.
async fn told(
    backend: &EmbeddedBackend,
    question: &str,
    max: u32,
    stop: &[&str],
) -> (Vec<u8>, Vec<TokenLogprob>, Finish) {
    let mut sampling = greedy(max);
    sampling.logprobs = Some(3);
    sampling.stop = stop.iter().map(|s| s.to_string()).collect();
    let mut g = backend.generate(chat(question, sampling)).await.unwrap();
    let (mut text, mut told, mut pending) = (Vec::new(), Vec::new(), false);
    loop {
        match g.next().await.expect("an end") {
            GenEvent::Logprobs(tokens) => {
                assert!(!pending, "two Logprobs events without text between them");
                pending = true;
                told.extend(tokens);
            }
            GenEvent::Text(t) => {
                pending = false;
                text.extend_from_slice(t.as_bytes());
            }
            GenEvent::Done(f) => return (text, told, f),
            GenEvent::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
}

/// One log probability per generated token, before its text; greedy sampling takes
/// the most likely token, so each chosen one is the first alternative, and the
/// alternatives are told most likely first.
#[tokio::test(flavor = "multi_thread")]
async fn greedy_log_probabilities_name_the_chosen_token_the_most_likely() {
    let backend = support::smollm(1, 1);
    let question = "What is the capital of France?";
    let (text, tokens, finish) = told(&backend, question, 16, &[]).await;
    assert!(!tokens.is_empty());
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.chosen.bytes.clone()).collect();
    assert_eq!(bytes, text, "{:?}", String::from_utf8_lossy(&text));
    assert_eq!(tokens.len() as u32, finish.completion_tokens);
    for t in &tokens {
        assert_eq!(t.top.len(), 3);
        assert_eq!(t.top[0].bytes, t.chosen.bytes);
        assert!((t.top[0].logprob - t.chosen.logprob).abs() < 1e-6);
        assert!(t.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(t
            .top
            .iter()
            .all(|p| p.logprob <= 0.0 && p.logprob.is_finite()));
        let mass: f32 = t.top.iter().map(|p| p.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }
    // Stopped at a sequence: the tokens after the text that went out are not told.
    let cut = String::from_utf8_lossy(&text)
        .split_whitespace()
        .nth(3)
        .unwrap_or("capital")
        .to_owned();
    let (short, some, _) = told(&backend, question, 16, &[cut.as_str()]).await;
    let bytes: Vec<u8> = some.iter().flat_map(|t| t.chosen.bytes.clone()).collect();
    assert!(
        short.len() < text.len() && bytes.starts_with(&short),
        "{short:?} {bytes:?}"
    );
    assert!(some.len() < tokens.len());
    // A request that does not ask is told nothing.
    let mut g = backend.generate(chat("Say hi.", greedy(8))).await.unwrap();
    while let Some(event) = g.next().await {
        assert!(!matches!(event, GenEvent::Logprobs(_)), "{event:?}");
    }
}
