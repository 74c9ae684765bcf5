from __future__ import annotations

import openai
import pytest

from tests.fake_openai import FakeOpenAI
from tests.support import MeshServer, free_port, local_provider_toml


@pytest.fixture(scope="session")
def fake_upstream():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def mesh(tmp_path_factory, fake_upstream):
    """One meshfast server for the session: the simulator, the fake upstream, and a dead one."""
    tmp = tmp_path_factory.mktemp("mesh")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    text = local_provider_toml(fake_upstream.base_url)
    text += (
        '\n[[providers]]\nname = "dead"\nkind = "openai"\n'
        f'base_url = "{dead}"\nconnect_timeout = 1.0\n\n[[providers.models]]\nid = "dead-model"\n'
    )
    text += '\n[sim]\nfail_models = { "sim-1-mini" = "" }\n'
    with MeshServer(tmp, "[server]\nmax_body_bytes = 65536\n" + text) as server:
        yield server


@pytest.fixture
def client(mesh):
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.key, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture
def aclient(mesh):
    return openai.AsyncOpenAI(base_url=mesh.base_url, api_key=mesh.key, max_retries=0, timeout=20)
