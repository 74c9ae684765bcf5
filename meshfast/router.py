"""The router: which provider endpoint serves a request.

Today it resolves a model id (any provider that serves it) or ``provider/model``
(pinned) to an :class:`~meshfast.providers.Endpoint`; router modes, capability
filters, privacy classes and failover slot in here.
"""

from __future__ import annotations

import time

import orjson

from meshfast import errors
from meshfast.config import Config
from meshfast.providers.base import Endpoint, Provider
from meshfast.providers.openai import OpenAIProvider
from meshfast.providers.sim import SimProvider


def build_providers(cfg: Config) -> list[Provider]:
    providers: list[Provider] = []
    if cfg.sim.enabled:
        providers.append(SimProvider(cfg.sim))
    for p in cfg.providers:
        if p.kind == "sim":
            continue  # the simulator is configured under [sim]
        providers.append(OpenAIProvider(p))
    return providers


class Router:
    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers
        self.endpoints: list[Endpoint] = []
        self._by_name: dict[str, Endpoint] = {}
        for provider in providers:
            models = provider.models if isinstance(provider, SimProvider) else provider.cfg.models  # type: ignore[attr-defined]
            for model in models:
                ep = Endpoint.of(provider, model)
                self.endpoints.append(ep)
                self._by_name.setdefault(model.id, ep)  # first provider listed wins for a bare id
                self._by_name[f"{provider.name}/{model.id}"] = ep
        created = int(time.time())
        self._model_objects = {}
        for ep in self.endpoints:
            if ep.id not in self._model_objects:
                self._model_objects[ep.id] = {
                    "id": ep.id,
                    "object": "model",
                    "created": created,
                    "owned_by": ep.provider.name,
                }
        self.models_body = orjson.dumps(
            {"object": "list", "data": list(self._model_objects.values())}
        )

    def resolve(self, name: str) -> Endpoint:
        ep = self._by_name.get(name)
        if ep is None:
            raise errors.ModelNotFound(
                f"The model `{name}` does not exist or is not served here.", param="model"
            )
        return ep

    def model_body(self, name: str) -> bytes:
        obj = self._model_objects.get(name)
        if obj is None:
            ep = self._by_name.get(name)
            obj = self._model_objects.get(ep.id) if ep else None
        if obj is None:
            raise errors.ModelNotFound(
                f"The model `{name}` does not exist or is not served here.", param="model"
            )
        return orjson.dumps(obj)
