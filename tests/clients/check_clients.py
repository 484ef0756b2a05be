"""The official `openai`, `ollama` and `anthropic` Python clients against a relaymesh
node, unchanged.

Usage: check_clients.py BASE_URL MODEL [mesh]
With `mesh`, BASE_URL is a gateway that sends requests to the mesh's suppliers: the
answers must be the same, and usage also says who served and what the acks metered.
Exits non-zero (with the failing assertion) if any call misbehaves.
"""

import json
import sys
import urllib.request

import anthropic
import ollama
import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
MESH = len(sys.argv) > 3 and sys.argv[3] == "mesh"
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
MESSAGES = [{"role": "user", "content": QUESTION}]

# --- openai -------------------------------------------------------------------
client = openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused-on-loopback")

ids = [m.id for m in client.models.list()]
assert MODEL in ids, ids

chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=32)
assert chat.choices[0].message.content == ANSWER, chat
assert chat.choices[0].finish_reason == "stop", chat
assert chat.usage.completion_tokens >= 7 and chat.usage.prompt_tokens > 5, chat.usage
if MESH:
    # The extension rides in `usage`, where the client keeps fields it does not know.
    report = chat.usage.model_extra["relaymesh"]
    assert len(report["suppliers"]) == 1 and report["acked_bytes"] == len(ANSWER.encode()), report
    assert report["compute_units"] > 0, report

stream = client.chat.completions.create(
    model=MODEL,
    messages=MESSAGES,
    temperature=0,
    max_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert "".join(pieces) == ANSWER, pieces
assert len(pieces) > 5, "streamed token by token"
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

text = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
assert "Paris" in text.choices[0].text, text

streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True
    )
    if c.choices
)
assert streamed == text.choices[0].text, (streamed, text.choices[0].text)

# Log probabilities: greedy takes the most likely token, so each token is the first of
# its alternatives; streamed, they come with the text of their tokens.
told = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, temperature=0, max_tokens=32, logprobs=True, top_logprobs=3
)
content = told.choices[0].logprobs.content
assert "".join(t.token for t in content) == told.choices[0].message.content == ANSWER, content
assert len(content) == told.usage.completion_tokens, (len(content), told.usage)
for t in content:
    assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token, t
    assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token, t
    assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6, t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, t
streamed_told = []
for chunk in client.chat.completions.create(
    model=MODEL, messages=MESSAGES, temperature=0, max_tokens=32, logprobs=True, top_logprobs=3, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        streamed_told.extend((t.token, t.logprob) for t in chunk.choices[0].logprobs.content)
assert [t for t, _ in streamed_told] == [t.token for t in content], streamed_told
assert max(abs(a - t.logprob) for (_, a), t in zip(streamed_told, content)) < 1e-3, streamed_told
# The completions API's own shape: parallel lists, the alternatives as a map.
legacy = client.completions.create(
    model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, logprobs=2
).choices[0]
assert "".join(legacy.logprobs.tokens) == legacy.text, legacy
assert len(legacy.logprobs.token_logprobs) == len(legacy.logprobs.tokens), legacy
assert all(len(alts) == 2 for alts in legacy.logprobs.top_logprobs), legacy
assert legacy.logprobs.text_offset[0] == 0, legacy
try:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=21)
    raise AssertionError("top_logprobs=21 was accepted")
except openai.BadRequestError as e:
    assert "top_logprobs" in str(e), e

try:
    client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert MODEL in str(e), e

try:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    assert "'n'" in str(e), e

# Embeddings: the client asks for base64 by default and decodes it.
TEXTS = ["The capital of France is Paris.", "Paris is in France.", "Bananas are yellow."]
vectors = client.embeddings.create(model=MODEL, input=TEXTS)
assert [d.index for d in vectors.data] == [0, 1, 2], vectors.data
dims = {len(d.embedding) for d in vectors.data}
assert dims == {576}, dims  # SmolLM2-135M's hidden size
for d in vectors.data:
    assert abs(sum(x * x for x in d.embedding) - 1) < 1e-3, "unit length"
near = sum(a * b for a, b in zip(vectors.data[0].embedding, vectors.data[1].embedding))
far = sum(a * b for a, b in zip(vectors.data[0].embedding, vectors.data[2].embedding))
assert near > far, (near, far)
assert vectors.usage.prompt_tokens > 10, vectors.usage
if MESH:
    # Made by a supplier, metered by the app's ack like a chat answer.
    report = vectors.usage.model_extra["relaymesh"]
    assert len(report["suppliers"]) == 1 and report["compute_units"] > 0, report
floats = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors.data[0].embedding)) < 1e-5

# --- ollama -------------------------------------------------------------------
oc = ollama.Client(host=BASE)

names = [m.model for m in oc.list().models]
assert MODEL in names, names

reply = oc.chat(model=MODEL, messages=MESSAGES, options={"temperature": 0, "num_predict": 32})
assert reply.message.content == ANSWER, reply
assert reply.done and reply.done_reason == "stop", reply
assert reply.eval_count >= 7, reply

parts = list(oc.chat(model=MODEL, messages=MESSAGES, options={"temperature": 0, "num_predict": 32}, stream=True))
assert "".join(p.message.content for p in parts) == ANSWER, parts
assert parts[-1].done and not parts[0].done

gen = oc.generate(model=MODEL, prompt=QUESTION, options={"temperature": 0, "num_predict": 32})
assert gen.response == ANSWER, gen

gen_parts = list(oc.generate(model=MODEL, prompt=QUESTION, options={"temperature": 0, "num_predict": 32}, stream=True))
assert "".join(p.response for p in gen_parts) == ANSWER, gen_parts

told = oc.chat(
    model=MODEL, messages=MESSAGES, options={"temperature": 0, "num_predict": 32}, logprobs=True, top_logprobs=2
)
assert "".join(t.token for t in told.logprobs) == ANSWER, told.logprobs
assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in told.logprobs), told
told_parts = list(
    oc.generate(model=MODEL, prompt=QUESTION, options={"temperature": 0, "num_predict": 32}, logprobs=True, stream=True)
)
assert "".join(t.token for p in told_parts for t in (p.logprobs or [])) == ANSWER, told_parts

embedded = oc.embed(model=MODEL, input=TEXTS)
assert len(embedded.embeddings) == 3 and {len(v) for v in embedded.embeddings} == {576}, embedded
single = oc.embeddings(model=MODEL, prompt=TEXTS[0])
assert len(single.embedding) == 576, single
assert max(abs(a - b) for a, b in zip(single.embedding, embedded.embeddings[0])) < 1e-4

loaded = oc.ps().models
assert [m.model for m in loaded] == ([] if MESH else [MODEL]), loaded  # a gateway loads nothing itself
if not MESH:
    # Where the engine runs it (a field the client drops; read as plain JSON): on this
    # CPU build, no layer on a GPU and nothing in VRAM.
    with urllib.request.urlopen(f"{BASE}/api/ps") as r:
        where = json.load(r)["models"][0]["relaymesh"]
    assert where["engine"] == "embedded" and where["device"] == "CPU", where
    assert where["gpu_layers"][0] == 0 and where["gpu_layers"][1] > 20, where
    assert where["total_slots"] >= 1 and loaded[0].size_vram == 0, (where, loaded[0])

shown = oc.show(MODEL)
# A mesh model is described as its supplier's ad describes it.
assert shown.details.family == "llama" and shown.details.parameter_size, shown
assert shown.details.quantization_level and shown.details.format == "gguf", shown

try:
    oc.chat(model="no-such-model", messages=MESSAGES)
    raise AssertionError("an unknown model was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 404 and MODEL in e.error, e

# --- anthropic (the Messages API) --------------------------------------------
ac = anthropic.Anthropic(base_url=BASE, api_key="unused-on-loopback")
# This SDK version takes no `temperature` argument; the API still reads the field.
GREEDY = {"temperature": 0}

msg = ac.messages.create(model=MODEL, max_tokens=32, extra_body=GREEDY, messages=MESSAGES)
assert msg.content[0].type == "text" and msg.content[0].text == ANSWER, msg
assert msg.stop_reason == "end_turn" and msg.role == "assistant", msg
assert msg.usage.output_tokens == chat.usage.completion_tokens, msg.usage
# Anthropic's input tokens leave out those read from the (prompt) cache.
assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) == chat.usage.prompt_tokens, msg.usage

with ac.messages.stream(model=MODEL, max_tokens=32, extra_body=GREEDY, messages=MESSAGES) as s:
    texts = list(s.text_stream)
    final = s.get_final_message()
assert "".join(texts) == ANSWER and len(texts) > 5, texts
assert final.stop_reason == "end_turn", final
assert final.usage.output_tokens == msg.usage.output_tokens, final.usage

# `message_start` counts the prompt where the model runs here (a gateway says 0 there,
# and the count in `message_delta`).
first = next(iter(ac.messages.create(model=MODEL, max_tokens=4, stream=True, messages=MESSAGES)))
assert first.type == "message_start", first
assert first.message.usage.input_tokens == (0 if MESH else chat.usage.prompt_tokens), first

# Tokens a request's prompt comes to: exact where the model runs, an estimate (a token
# per 4 bytes, said in `relaymesh.estimated`) through a gateway.
counted = ac.messages.count_tokens(model=MODEL, messages=MESSAGES)
if MESH:
    assert counted.input_tokens > 0 and counted.model_extra["relaymesh"]["estimated"], counted
else:
    assert counted.input_tokens == chat.usage.prompt_tokens, (counted, chat.usage)
    assert not counted.model_extra["relaymesh"]["estimated"], counted

# A stop sequence is named when it ends the answer, whole and streamed.
stopped = ac.messages.create(
    model=MODEL, max_tokens=32, stop_sequences=["zzz", " Paris"], extra_body=GREEDY, messages=MESSAGES
)
assert stopped.content[0].text == "The capital of France is", stopped
assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " Paris", stopped
with ac.messages.stream(
    model=MODEL, max_tokens=32, stop_sequences=[" Paris"], extra_body=GREEDY, messages=MESSAGES
) as s:
    final = s.get_final_message()
assert final.stop_reason == "stop_sequence" and final.stop_sequence == " Paris", final

system = ac.messages.create(
    model=MODEL, max_tokens=16, extra_body=GREEDY, system="Answer in one word.", messages=MESSAGES
)
assert system.content[0].text.strip(), system

short = ac.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY, messages=MESSAGES)
assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3, short

try:
    ac.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES, extra_body={"thinking": {"type": "enabled"}})
    raise AssertionError("thinking was accepted")
except anthropic.BadRequestError as e:
    assert "thinking" in str(e), e

try:
    ac.messages.create(model="no-such-model", max_tokens=8, messages=MESSAGES)
    raise AssertionError("an unknown model was accepted")
except anthropic.NotFoundError as e:
    assert MODEL in str(e), e

print("openai, ollama and anthropic clients: all checks passed")
