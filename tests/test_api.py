"""The gateway through the official openai SDK (sync and async), over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import httpx
import openai
import pytest

IMAGE_PART = {
    "type": "image_url",
    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "age", "tags"],
            "additionalProperties": False,
        },
    },
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- the simulator ------------------------------------------------------------------------


def test_sim_chat_non_stream(client):
    r = client.chat.completions.with_raw_response.create(model="sim-1", messages=user("hello"))
    assert r.headers["x-mesh-provider"] == "sim"
    assert r.headers["x-mesh-model"] == "sim-1"
    c = r.parse()
    assert c.object == "chat.completion"
    assert c.choices[0].message.content
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens == 32
    assert c.usage.total_tokens == c.usage.prompt_tokens + 32
    again = client.chat.completions.create(model="sim-1", messages=user("hello"))
    assert again.choices[0].message.content == c.choices[0].message.content  # deterministic


def test_sim_chat_stream_with_and_without_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="sim-1", messages=user("hi"), stream=True, max_tokens=8
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(text.split()) == 8
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks), "usage chunk must be hidden when not asked for"
    chunks = list(
        client.chat.completions.create(
            model="sim-1",
            messages=user("hi"),
            stream=True,
            max_tokens=8,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8


def test_sim_tools(client):
    c = client.chat.completions.create(
        model="sim-1", messages=user("weather in Paris?"), tools=[WEATHER_TOOL]
    )
    call = c.choices[0].message.tool_calls[0]
    assert c.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
    stream = client.chat.completions.create(
        model="sim-1", messages=user("weather?"), tools=[WEATHER_TOOL], stream=True
    )
    pieces = [
        tc.function.arguments
        for ch in stream
        if ch.choices and ch.choices[0].delta.tool_calls
        for tc in ch.choices[0].delta.tool_calls
    ]
    assert json.loads("".join(pieces)) == args | json.loads("".join(pieces))


def test_sim_json_schema(client):
    c = client.chat.completions.create(
        model="sim-1", messages=user("a person"), response_format=PERSON_SCHEMA
    )
    person = json.loads(c.choices[0].message.content)
    assert (
        isinstance(person["name"], str)
        and isinstance(person["age"], int)
        and isinstance(person["tags"], list)
    )


def test_sim_vision_parts_accepted(client):
    c = client.chat.completions.create(
        model="sim-1",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE_PART]}
        ],
    )
    assert c.choices[0].message.content


def test_sim_embeddings_float_and_base64(mesh, client):
    e = client.embeddings.create(model="sim-embed-1", input=["a", "b"])  # the SDK asks for base64
    assert [d.index for d in e.data] == [0, 1]
    assert len(e.data[0].embedding) == 256
    assert abs(sum(v * v for v in e.data[0].embedding) - 1.0) < 1e-3
    raw = httpx.post(
        str(client.base_url) + "embeddings",
        headers={"Authorization": f"Bearer {mesh.key}"},
        json={"model": "sim-embed-1", "input": "a", "encoding_format": "float", "dimensions": 8},
    ).json()
    assert len(raw["data"][0]["embedding"]) == 8
    b64 = httpx.post(
        str(client.base_url) + "embeddings",
        headers={"Authorization": f"Bearer {mesh.key}"},
        json={"model": "sim-embed-1", "input": "a", "encoding_format": "base64", "dimensions": 8},
    ).json()
    floats = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert floats == pytest.approx(raw["data"][0]["embedding"], rel=1e-6)


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"sim-1", "sim-1-mini", "sim-embed-1", "up-echo", "up-embed"} <= ids
    m = client.models.retrieve("sim-1")
    assert m.id == "sim-1" and m.owned_by == "sim"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_async_client_stream_and_chat(aclient):
    async def main():
        async with aclient:
            c = await aclient.chat.completions.create(model="sim-1", messages=user("async"))
            stream = await aclient.chat.completions.create(
                model="up-stream", messages=user("async"), stream=True
            )
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            return c, text

    c, text = asyncio.run(main())
    assert c.choices[0].message.content
    assert text == "Hello from the fake upstream"


# -- an OpenAI-compatible upstream over the compiled client ---------------------------------


def test_passthrough_maps_only_model(client, fake_upstream):
    fields = dict(
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format=PERSON_SCHEMA,
        n=2,
        seed=7,
        logprobs=True,
        top_logprobs=2,
        stop=["\n\n"],
        temperature=0.3,
        user="u-123",
        metadata={"team": "a"},
        store=False,
    )
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE_PART]}]
    c = client.chat.completions.create(model="up-echo", messages=messages, **fields)
    sent = json.loads(c.choices[0].message.content)
    assert sent["model"] == "echo"
    assert sent["messages"] == messages
    for key, value in fields.items():
        assert sent[key] == value, key
    assert "stream_options" not in sent
    hdrs = fake_upstream.requests[-1]["headers"]
    assert hdrs["authorization"] == "Bearer sk-fake-upstream", (
        "the upstream key replaces the client's"
    )


def test_upstream_stream_asks_for_usage_and_hides_it(client, fake_upstream):
    chunks = list(
        client.chat.completions.create(model="up-stream", messages=user("x"), stream=True)
    )
    assert fake_upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert all(ch.usage is None for ch in chunks)
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == "Hello from the fake upstream"
    )
    chunks = list(
        client.chat.completions.create(
            model="up-stream",
            messages=user("x"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.total_tokens == 16


def test_upstream_embeddings(client):
    e = client.embeddings.create(model="up-embed", input=["a", "b", "c"], encoding_format="float")
    assert len(e.data) == 3 and e.data[0].embedding == [0.1, 0.2, 0.3]


def test_upstream_non_stream(client):
    r = client.chat.completions.with_raw_response.create(
        model="local/up-stream", messages=user("x")
    )
    assert r.headers["x-mesh-provider"] == "local"
    assert r.parse().choices[0].message.content == "Hello from the fake upstream"


# -- errors: the OpenAI shape, the right status, the SDK's matching class -------------------


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def post(mesh, path: str, content: bytes, **kw) -> httpx.Response:
    return httpx.post(
        mesh.base_url + path,
        content=content,
        headers={"Authorization": f"Bearer {mesh.key}", "Content-Type": "application/json"},
        **kw,
    )


def test_malformed_json_400(mesh):
    r = post(mesh, "/chat/completions", b'{"model": "sim-1", "messages": [')
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "sim-1"}, "messages"),
        ({"model": "sim-1", "messages": "hi"}, "messages"),
        ({"model": "sim-1", "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {"model": "sim-1", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        (
            {"model": "sim-1", "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"},
            "max_tokens",
        ),
        (
            {
                "model": "sim-1",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": "hot",
            },
            "temperature",
        ),
    ],
)
def test_bad_fields_400_with_param(client, body, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/chat/completions", body=body, cast_to=object)
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param


def test_bad_embedding_input_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="sim-embed-1", input=[])
    assert exc.value.body["param"] == "input"


def test_body_over_limit_413(mesh, client):
    big = json.dumps({"model": "sim-1", "messages": user("x" * 70_000)}).encode()
    r = post(mesh, "/chat/completions", big)
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="sim-1", messages=user("x" * 70_000))
    assert exc.value.status_code == 413


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-nonexistent", messages=user("x"))
    assert exc.value.body["code"] == "model_not_found"
    assert exc.value.body["param"] == "model"


def test_upstream_unreachable_502(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="dead-model", messages=user("x"))
    assert exc.value.status_code == 502
    assert exc.value.body["code"] == "upstream_unreachable"


def test_upstream_timeout_504(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="up-hang", messages=user("x"))
    assert exc.value.status_code == 504
    assert exc.value.body["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("model", "cls", "status"),
    [
        ("up-err-429", openai.RateLimitError, 429),
        ("up-err-500", openai.InternalServerError, 500),
        ("up-err-400", openai.BadRequestError, 400),
    ],
)
def test_upstream_errors_pass_through(client, model, cls, status):
    with pytest.raises(cls) as exc:
        client.chat.completions.create(model=model, messages=user("x"))
    assert exc.value.status_code == status
    assert exc.value.body["message"] == f"fake upstream says {status}"
    assert exc.value.body["code"] == f"fake_{status}"


def test_sim_injected_failures(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="sim-1", messages=user("x"), extra_headers={"x-mesh-sim-fail": "status:503"}
        )
    assert exc.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="sim-1", messages=user("x"), extra_headers={"x-mesh-sim-fail": "timeout"}
        )
    assert exc.value.status_code == 504


@pytest.mark.parametrize(
    ("model", "headers"), [("up-break", {}), ("sim-1", {"x-mesh-sim-fail": "midstream"})]
)
def test_midstream_failure_ends_with_error_event(client, model, headers):
    stream = client.chat.completions.create(
        model=model, messages=user("x"), stream=True, extra_headers=headers
    )
    got = []
    with pytest.raises(openai.APIError) as exc:
        for ch in stream:
            got.append(ch)
    assert got, "some chunks arrived before the failure"
    assert "stream" in str(exc.value.message).lower()


def test_wrong_method_and_path(mesh):
    r = httpx.get(mesh.base_url + "/chat/completions")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    r = httpx.get(mesh.base_url + "/nope")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_chat_on_embedding_model_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="sim-embed-1", messages=user("x"))
    assert exc.value.body["code"] == "unsupported_operation"


def test_health(mesh):
    r = httpx.get(mesh.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
