"""The official `openai` Python client against `frugal serve` (run by tests/serve.rs).

FRUGAL_URL is the server's base URL (…/v1); the server was started with --api-key sk-test and
serves smollm2 and minilm.
"""
import os
import struct

import openai
from openai import OpenAI

url = os.environ["FRUGAL_URL"]
client = OpenAI(base_url=url, api_key="sk-test", max_retries=0)

# Models.
ids = sorted(m.id for m in client.models.list())
assert ids == ["minilm", "smollm2"], ids

# Chat, whole.
r = client.chat.completions.create(
    model="smollm2",
    messages=[{"role": "system", "content": "Answer briefly."},
              {"role": "user", "content": "What is the capital of France?"}],
    temperature=0, max_tokens=12)
text = r.choices[0].message.content
assert r.object == "chat.completion" and r.model == "smollm2", r
assert r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length")
assert text and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10, r
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
extra = r.usage.model_extra
assert 0 < extra["cost_usd"] < extra["reference_cost_usd"], extra
assert extra["reference_model"] == "gpt-4o"

# Chat, streamed: the same greedy answer, piece by piece, with usage at the end.
pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model="smollm2",
    messages=[{"role": "system", "content": "Answer briefly."},
              {"role": "user", "content": "What is the capital of France?"}],
    temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert len(pieces) > 1, pieces
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == r.choices[0].finish_reason
assert usage and usage.completion_tokens == r.usage.completion_tokens, usage

# Text completion (no chat template), and its stream.
c = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0)
assert c.object == "text_completion" and c.choices[0].text, c
streamed = "".join(x.choices[0].text for x in client.completions.create(
    model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0, stream=True) if x.choices)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

# Embeddings: the client asks for base64 by default; floats when asked; both the same vectors.
e = client.embeddings.create(model="minilm", input=["cheap inference", "expensive inference"])
assert len(e.data) == 2 and len(e.data[0].embedding) == 384, len(e.data[0].embedding)
f = client.embeddings.create(model="minilm", input="cheap inference", encoding_format="float")
assert max(abs(a - b) for a, b in zip(e.data[0].embedding, f.data[0].embedding)) < 1e-6
norm = sum(x * x for x in f.data[0].embedding) ** 0.5
assert abs(norm - 1) < 1e-3, norm
assert e.usage.prompt_tokens > 0

# Errors surface as the client's own exceptions.
try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as err:
    assert "smollm2" in str(err), err
try:
    client.chat.completions.create(model="smollm2", messages=[])
    raise AssertionError("empty messages accepted")
except openai.BadRequestError as err:
    assert "messages" in str(err), err
try:
    OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError:
    pass

print("all openai client checks passed")
