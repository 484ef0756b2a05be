"""What agent frameworks ask of a node, through the official `openai`, `ollama` and
`anthropic` Python clients, unchanged: structured output (a JSON schema, a Pydantic
model, JSON mode) and tool calls (a call, its result sent back, the answer after it;
whole and streamed).

Usage: check_agents.py BASE_URL MODEL
BASE_URL may be a node serving MODEL itself or a gateway sending it to the mesh: the
output format travels in the signed request to the supplier, which samples under its
grammar. Exits non-zero (with the failing assertion) if any call misbehaves.
"""

import json
import sys

import anthropic
import ollama
import openai
import pydantic

BASE, MODEL = sys.argv[1], sys.argv[2]
GREEDY = {"temperature": 0}


class City(pydantic.BaseModel):
    city: str
    population: int
    coastal: bool


CITY_QUESTION = [{"role": "user", "content": "Describe the capital of France."}]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
RESULT = "22 degrees and sunny"


def valid_city(value):
    """Checks a City by hand, as a strict schema demands: these keys, these types."""
    assert set(value) == {"city", "population", "coastal"}, value
    assert isinstance(value["city"], str) and isinstance(value["population"], int), value
    assert isinstance(value["coastal"], bool), value


# --- openai: structured output --------------------------------------------------
client = openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused-on-loopback")

schema = City.model_json_schema()
schema["additionalProperties"] = False
out = client.chat.completions.create(
    model=MODEL,
    messages=CITY_QUESTION,
    temperature=0,
    max_tokens=96,
    response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": schema}},
)
valid_city(json.loads(out.choices[0].message.content))

# The SDK's own path for structured output: a Pydantic model in, a parsed object out.
parsed = client.chat.completions.parse(
    model=MODEL, messages=CITY_QUESTION, temperature=0, max_tokens=96, response_format=City
)
city = parsed.choices[0].message.parsed
assert isinstance(city, City), parsed

mode = client.chat.completions.create(
    model=MODEL, messages=CITY_QUESTION, temperature=0, max_tokens=96, response_format={"type": "json_object"}
)
assert isinstance(json.loads(mode.choices[0].message.content), dict), mode

# --- openai: tool calls -----------------------------------------------------------
asked = client.chat.completions.create(
    model=MODEL, messages=WEATHER_QUESTION, temperature=0, max_tokens=64, tools=[WEATHER], tool_choice="required"
)
choice = asked.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather", call
assert isinstance(json.loads(call.function.arguments)["city"], str), call
assert call.id.startswith("call_"), call

# The round trip: the call and its result go back, and the model answers in text.
# (SmolLM2-135M reads the result but does not reliably use it: it may repeat it, or
# write a call out as text; what the answer says is not checked.)
conversation = WEATHER_QUESTION + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": RESULT},
]
answer = client.chat.completions.create(
    model=MODEL, messages=conversation, temperature=0, max_tokens=64, tools=[WEATHER], tool_choice="none"
)
assert answer.choices[0].finish_reason == "stop", answer
assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls, answer

# Streamed: the deltas OpenAI streams, put together by index as clients do.
calls, finish = {}, None
for chunk in client.chat.completions.create(
    model=MODEL,
    messages=WEATHER_QUESTION,
    temperature=0,
    max_tokens=64,
    tools=[WEATHER],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    stream=True,
):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    for d in delta.tool_calls or []:
        entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
        entry["id"] = d.id or entry["id"]
        if d.function and d.function.name:
            entry["name"] += d.function.name
        if d.function and d.function.arguments:
            entry["arguments"] += d.function.arguments
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls", finish
assert calls[0]["name"] == "get_weather" and calls[0]["id"], calls
assert json.loads(calls[0]["arguments"]) == json.loads(call.function.arguments), calls

try:
    client.chat.completions.create(
        model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}
    )
    raise AssertionError("a call to an unknown tool was asked for")
except openai.BadRequestError as e:
    assert "nope" in str(e), e

# --- ollama -------------------------------------------------------------------------
oc = ollama.Client(host=BASE)

reply = oc.chat(model=MODEL, messages=CITY_QUESTION, format=City.model_json_schema(), options={"temperature": 0, "num_predict": 96})
City.model_validate_json(reply.message.content)
as_json = oc.generate(model=MODEL, prompt="Describe Paris.", format="json", options={"temperature": 0, "num_predict": 64})
assert isinstance(json.loads(as_json.response), dict), as_json

asked = oc.chat(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER], options={"temperature": 0, "num_predict": 64})
calls = asked.message.tool_calls
assert calls and calls[0].function.name == "get_weather", asked
assert isinstance(calls[0].function.arguments["city"], str), calls

streamed = [p for p in oc.chat(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER], options={"temperature": 0, "num_predict": 64}, stream=True)]
assert any(p.message.tool_calls for p in streamed) and streamed[-1].done, streamed

after = oc.chat(
    model=MODEL,
    messages=WEATHER_QUESTION + [asked.message, {"role": "tool", "content": RESULT, "tool_name": "get_weather"}],
    options={"temperature": 0, "num_predict": 64},
)
assert after.message.content, after

# --- anthropic ----------------------------------------------------------------------
ac = anthropic.Anthropic(base_url=BASE, api_key="unused-on-loopback")
TOOL = {"name": "get_weather", "description": "The current weather in a city", "input_schema": WEATHER_SCHEMA}

used = ac.messages.create(
    model=MODEL, max_tokens=64, extra_body=GREEDY, messages=WEATHER_QUESTION, tools=[TOOL], tool_choice={"type": "any"}
)
assert used.stop_reason == "tool_use", used
block = used.content[0]
assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_"), used
assert isinstance(block.input["city"], str), block

with ac.messages.stream(
    model=MODEL, max_tokens=64, extra_body=GREEDY, messages=WEATHER_QUESTION, tools=[TOOL], tool_choice={"type": "any"}
) as s:
    final = s.get_final_message()
assert final.stop_reason == "tool_use" and final.content[0].input == block.input, final

reply = ac.messages.create(
    model=MODEL,
    max_tokens=64,
    extra_body=GREEDY,
    tools=[TOOL],
    tool_choice={"type": "none"},
    messages=WEATHER_QUESTION
    + [
        {"role": "assistant", "content": [b.model_dump() for b in used.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": RESULT}]},
    ],
)
assert reply.stop_reason == "end_turn" and reply.content[0].type == "text", reply
assert reply.content[0].text, reply

print("agents (structured output, tool calls) through openai, ollama and anthropic: all checks passed")
