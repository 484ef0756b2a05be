#!/usr/bin/env bash
# curl against a relaymesh node, as the README shows it. Usage: check_curl.sh BASE MODEL
set -euo pipefail
BASE=$1 MODEL=$2
ANSWER="The capital of France is Paris."

out=$(curl -sf "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "'"$MODEL"'", "temperature": 0,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]}')
grep -qF "\"content\":\"$ANSWER\"" <<<"$out" || { echo "openai chat: $out"; exit 1; }

out=$(curl -sfN "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "'"$MODEL"'", "temperature": 0, "stream": true,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]}')
tail -n 1 <<<"$(grep . <<<"$out")" | grep -qx 'data: \[DONE\]' || { echo "openai stream: $out"; exit 1; }

# Ollama's API, as curl users call it (no content type, streaming by default).
out=$(curl -sf "$BASE/api/generate" -d '{"model": "'"$MODEL"'", "prompt": "What is the capital of France?", "options": {"temperature": 0}}')
[[ $(wc -l <<<"$out") -gt 5 ]] || { echo "ollama stream: $out"; exit 1; }
tail -n 1 <<<"$out" | grep -q '"done":true' || { echo "ollama stream end: $out"; exit 1; }

# Anthropic's Messages API, as its documentation shows it.
out=$(curl -sf "$BASE/v1/messages" -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' -d '{
  "model": "'"$MODEL"'", "max_tokens": 32, "temperature": 0,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]}')
grep -qF "\"text\":\"$ANSWER\"" <<<"$out" || { echo "anthropic message: $out"; exit 1; }
grep -qF '"stop_reason":"end_turn"' <<<"$out" || { echo "anthropic stop reason: $out"; exit 1; }

# Structured output and a tool call, as OpenAI's documentation shows them.
out=$(curl -sf "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "'"$MODEL"'", "temperature": 0, "max_tokens": 64,
  "messages": [{"role": "user", "content": "Name the capital of France."}],
  "response_format": {"type": "json_schema", "json_schema": {"name": "city", "strict": true,
    "schema": {"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"], "additionalProperties": false}}}}')
grep -qF '"content":"{' <<<"$out" || { echo "openai json_schema: $out"; exit 1; }
out=$(curl -sf "$BASE/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "'"$MODEL"'", "temperature": 0, "max_tokens": 64, "tool_choice": "required",
  "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
  "tools": [{"type": "function", "function": {"name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}')
grep -qF '"finish_reason":"tool_calls"' <<<"$out" || { echo "openai tools: $out"; exit 1; }
grep -qF '"name":"get_weather"' <<<"$out" || { echo "openai tool name: $out"; exit 1; }

code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/v1/chat/completions" -d '{"model": "nope", "messages": []}')
[[ $code == 404 ]] || { echo "unknown model gave $code"; exit 1; }
echo "curl: all checks passed"
