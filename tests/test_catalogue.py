"""The shipped model catalogue and its loader: data sanity, exact prices, overrides, errors."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from meshfast.catalogue import (
    CAPABILITIES,
    PRIVACY_ORDER,
    CatalogueModel,
    load_catalogue,
    privacy_rank,
)
from meshfast.config import PRIVACY_CLASSES
from meshfast.errors import ConfigError

NAMED_FAMILIES = {
    "openai-gpt", "openai-o", "claude", "gemini", "llama", "mistral", "deepseek", "qwen",
    "grok", "command", "phi", "gemma", "nova", "jamba", "nemotron",
}  # fmt: skip


@pytest.fixture(scope="module")
def cat() -> dict[str, CatalogueModel]:
    return load_catalogue()


def test_shipped_file_is_package_data():
    assert resources.files("meshfast").joinpath("catalogue.toml").is_file()


def test_size_and_families(cat):
    assert len(cat) >= 80
    families = {m.family for m in cat.values()}
    assert len(families) >= 10
    assert NAMED_FAMILIES <= families
    embedding_families = {m.family for m in cat.values() if m.kind == "embedding"}
    assert len(embedding_families) >= 5


def test_every_model_is_sane(cat):
    for mid, m in cat.items():
        assert m.id == mid
        assert m.endpoints, mid
        assert m.capabilities <= set(CAPABILITIES), mid
        assert 0 <= m.quality <= 100, mid
        assert m.context_window > 0, mid
        providers = [ep.provider for ep in m.endpoints]
        assert len(providers) == len(set(providers)), mid
        for ep in m.endpoints:
            assert isinstance(ep.input_nano_per_mtok, int), mid
            assert isinstance(ep.output_nano_per_mtok, int), mid
            assert ep.privacy in PRIVACY_CLASSES, mid
            if ep.provider == "local":
                assert ep.privacy == "confidential", mid
                assert ep.input_nano_per_mtok == ep.output_nano_per_mtok == 0, mid
            elif m.kind == "chat":
                assert ep.input_nano_per_mtok > 0 and ep.output_nano_per_mtok > 0, (mid, ep)
            if ep.cached_input_nano_per_mtok is not None:
                assert ep.cached_input_nano_per_mtok <= ep.input_nano_per_mtok, (mid, ep)


def test_kinds(cat):
    chat = [m for m in cat.values() if m.kind == "chat"]
    embedding = [m for m in cat.values() if m.kind == "embedding"]
    assert len(embedding) >= 10
    for m in chat:
        assert "streaming" in m.capabilities, m.id
        assert "embeddings" not in m.capabilities, m.id
        assert 0 < m.max_output_tokens <= m.context_window, m.id
    for m in embedding:
        assert "embeddings" in m.capabilities, m.id
        assert m.max_output_tokens == 0, m.id
    for mid in ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"):
        assert cat[mid].kind == "embedding"


def test_privacy_classes_present(cat):
    used = {ep.privacy for m in cat.values() for ep in m.endpoints}
    assert used == set(PRIVACY_CLASSES)
    assert cat["claude-sonnet-4"].endpoint("bedrock").privacy == "private_gateway"


def test_prices_are_exact_nano(cat):
    ep = cat["gpt-4o-mini"].endpoint("openai")
    assert ep.upstream == "gpt-4o-mini"
    assert ep.input_nano_per_mtok == 150_000_000
    assert ep.output_nano_per_mtok == 600_000_000
    assert ep.cached_input_nano_per_mtok == 75_000_000
    assert cat["gemini-1.5-flash-8b"].endpoint("google").input_nano_per_mtok == 37_500_000
    assert cat["nova-micro"].endpoint("bedrock").cached_input_nano_per_mtok == 8_750_000
    assert cat["claude-opus-4"].endpoint("anthropic").output_nano_per_mtok == 75_000_000_000
    assert cat["gpt-4-turbo"].endpoint("openai").cached_input_nano_per_mtok is None


def test_privacy_rank():
    assert PRIVACY_ORDER == PRIVACY_CLASSES
    ranks = [privacy_rank(p) for p in ("standard", "protected", "private_gateway", "confidential")]
    assert ranks == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        privacy_rank("secret")


# --- overrides ---------------------------------------------------------------------------


def test_override_replaces_endpoint_fields_and_model_fields():
    cat = load_catalogue(
        overrides=[
            {
                "id": "gpt-4o-mini",
                "quality": 61,
                "endpoints": [{"provider": "openai", "input_usd_per_mtok": "0.10"}],
            }
        ]
    )
    m = cat["gpt-4o-mini"]
    assert m.quality == 61
    assert m.context_window == 128_000
    ep = m.endpoint("openai")
    assert ep.input_nano_per_mtok == 100_000_000
    assert ep.output_nano_per_mtok == 600_000_000  # kept
    assert ep.upstream == "gpt-4o-mini"
    assert m.endpoint("azure").input_nano_per_mtok == 150_000_000  # untouched
    assert load_catalogue()["gpt-4o-mini"].endpoint("openai").input_nano_per_mtok == 150_000_000


def test_override_adds_endpoint():
    extra = {
        "provider": "my-vllm",
        "upstream": "meta-llama/Llama-3.1-8B-Instruct",
        "input_usd_per_mtok": "0.01",
        "output_usd_per_mtok": "0.02",
        "privacy": "confidential",
    }
    cat = load_catalogue(overrides=[{"id": "llama-3.1-8b-instruct", "endpoints": [extra]}])
    m = cat["llama-3.1-8b-instruct"]
    assert m.endpoints[-1].provider == "my-vllm"
    assert m.endpoints[-1].output_nano_per_mtok == 20_000_000
    assert len(m.endpoints) == len(load_catalogue()["llama-3.1-8b-instruct"].endpoints) + 1


def test_override_adds_model():
    new = {
        "id": "house-model",
        "family": "house",
        "context_window": 32768,
        "max_output_tokens": 4096,
        "capabilities": ["streaming", "tools"],
        "quality": 50,
        "endpoints": [
            {
                "provider": "local",
                "upstream": "org/house-model",
                "input_usd_per_mtok": "0",
                "output_usd_per_mtok": "0",
                "privacy": "confidential",
            }
        ],
    }
    cat = load_catalogue(overrides=[new])
    assert cat["house-model"].kind == "chat"
    assert cat["house-model"].capabilities == frozenset({"streaming", "tools"})
    assert len(cat) == len(load_catalogue()) + 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            {"id": "gpt-4o", "endpoints": [{"provider": "openai", "privacy": "secret"}]},
            "catalogue.models[0].endpoints[0].privacy",
        ),
        (
            {"id": "gpt-4o", "endpoints": [{"provider": "openai", "input_usd_per_mtok": 0.1}]},
            "catalogue.models[0].endpoints[0].input_usd_per_mtok",
        ),
        ({"id": "gpt-4o", "qualty": 3}, "catalogue.models[0].qualty"),
        ({"id": "gpt-4o", "quality": 101}, "catalogue.models[0].quality"),
        ({"id": "brand-new", "family": "x"}, "catalogue.models[0].context_window"),
        (
            {"id": "gpt-4o", "endpoints": [{"provider": "newco", "upstream": "m"}]},
            "catalogue.models[0].endpoints[0].input_usd_per_mtok",
        ),
    ],
)
def test_invalid_override_names_operator_file_and_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_catalogue(overrides=[override], source_name="/etc/meshfast/meshfast.toml")
    assert exc.value.source == "/etc/meshfast/meshfast.toml"
    assert exc.value.key == key
    assert str(exc.value).startswith("/etc/meshfast/meshfast.toml: " + key)


# --- malformed data ----------------------------------------------------------------------

GOOD = """\
[[models]]
id = "a"
family = "f"
context_window = 1000
max_output_tokens = 100
capabilities = ["streaming"]
quality = 10
  [[models.endpoints]]
  provider = "p"
  upstream = "a-up"
  input_usd_per_mtok = "1.5"
  output_usd_per_mtok = "2"
  privacy = "standard"
"""


def load_text(tmp_path, text: str) -> dict[str, CatalogueModel]:
    path = tmp_path / "cat.toml"
    path.write_text(text)
    return load_catalogue(path)


def test_minimal_file_loads(tmp_path):
    m = load_text(tmp_path, GOOD)["a"]
    assert m.endpoints[0].input_nano_per_mtok == 1_500_000_000
    assert m.endpoints[0].cached_input_nano_per_mtok is None


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('privacy = "standard"', 'privacy = "public"', "models[0].endpoints[0].privacy"),
        ('"1.5"', '"1.5.0"', "models[0].endpoints[0].input_usd_per_mtok"),
        ('"1.5"', '"-1"', "models[0].endpoints[0].input_usd_per_mtok"),
        ('"1.5"', "1.5", "models[0].endpoints[0].input_usd_per_mtok"),
        ('"streaming"', '"telepathy"', "models[0].capabilities"),
        ("quality = 10", "quality = -1", "models[0].quality"),
        ("quality = 10", 'quality = "10"', "models[0].quality"),
        ("context_window = 1000", "context_window = 0", "models[0].context_window"),
        ("max_output_tokens = 100", "max_output_tokens = 2000", "models[0].max_output_tokens"),
        ("max_output_tokens = 100\n", "", "models[0].max_output_tokens"),
        ('upstream = "a-up"', 'upstream = "a-up"\n  region = "x"', "models[0].endpoints[0].region"),
        ('family = "f"', 'family = "f"\nkind = "chat"', "models[0].kind"),
        ('upstream = "a-up"\n', "", "models[0].endpoints[0].upstream"),
        ('id = "a"', 'id = "a/b"', "models[0].id"),
    ],
)
def test_malformed_data_names_the_key(tmp_path, old, new, key):
    assert old in GOOD
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, GOOD.replace(old, new, 1))
    assert exc.value.key == key
    assert exc.value.source == str(tmp_path / "cat.toml")


def test_duplicate_ids_and_providers(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, GOOD + "\n" + GOOD)
    assert exc.value.key == "models[1].id"
    second_ep = GOOD[GOOD.index("  [[models.endpoints]]") :]
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, GOOD + second_ep)
    assert exc.value.key == "models[0].endpoints[1].provider"


def test_no_endpoints_and_bad_toml(tmp_path):
    no_eps = GOOD[: GOOD.index("  [[models.endpoints]]")]
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, no_eps)
    assert exc.value.key == "models[0].endpoints"
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, "models = [")
    assert exc.value.key == "-"
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, "extra = 1\n" + GOOD)
    assert exc.value.key == "extra"


def test_shipped_toml_prices_are_strings():
    """Money in the data file is quoted decimal strings, never TOML floats."""
    text = resources.files("meshfast").joinpath("catalogue.toml").read_text()
    data = tomllib.loads(text)
    for model in data["models"]:
        for ep in model["endpoints"]:
            for key, value in ep.items():
                if key.endswith("_usd_per_mtok"):
                    assert isinstance(value, str), (model["id"], key)
