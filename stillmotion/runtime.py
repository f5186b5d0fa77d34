"""Wiring: settings in, the store, storage, service, engines and worker out.

Used by the CLI, the API's lifespan and the tests; nothing below this layer imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillmotion import catalog
from stillmotion.api.render import TaskRenderer
from stillmotion.config import Settings
from stillmotion.engines.base import Engine
from stillmotion.engines.registry import available, create_engine, load_factory
from stillmotion.errors import ServiceError
from stillmotion.money import MoneyError, PriceList, parse_factors, parse_overrides
from stillmotion.storage.local import LocalStorage
from stillmotion.storage.signing import UrlSigner, load_or_create_secret
from stillmotion.tasks.keys import KeyVerifier
from stillmotion.tasks.notify import Listener
from stillmotion.tasks.service import TaskService
from stillmotion.tasks.store import TaskStore
from stillmotion.worker.housekeeping import HousekeepingConfig
from stillmotion.worker.runner import RunnerConfig
from stillmotion.worker.worker import Worker

log = logging.getLogger("stillmotion")


class ConfigurationError(Exception):
    """A setting that cannot work; the CLI prints it and exits."""


@dataclass
class Runtime:
    settings: Settings
    store: TaskStore
    storage: LocalStorage
    service: TaskService
    renderer: TaskRenderer
    keys: KeyVerifier
    worker: Worker | None = None
    listener: Listener | None = None  # PostgreSQL: new work from other processes wakes ours

    async def start_worker(
        self, engines: list[str] | None = None, *, dedicated: bool = False
    ) -> Worker:
        worker = build_worker(self, engines, dedicated=dedicated)
        self.worker = worker
        self.service.set_on_submit(worker.wake)
        if self.store.dialect == "postgresql":
            self.listener = Listener(self.store.url, worker.wake)
            self.listener.start()
        worker.start()
        return worker

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        await self.store.close()


def resolve_routes(settings: Settings) -> dict[str, str]:
    """``{model: engine}`` for every catalog model; unknown names fail at start."""
    try:
        routes = settings.route_map()
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    for model, engine in routes.items():
        if catalog.get_model(model) is None:
            known = ", ".join(catalog.model_names())
            raise ConfigurationError(f"STILLMOTION_ROUTES names unknown model {model!r} ({known})")
        if engine not in available():
            known = ", ".join(sorted(available()))
            raise ConfigurationError(
                f"STILLMOTION_ROUTES routes {model} to unknown engine {engine!r} ({known})"
            )
    _check_dashscope(settings, routes)
    return {m: routes.get(m, "motion") for m in catalog.model_names()}


def price_list(settings: Settings) -> PriceList:
    """The effective prices from the settings; a bad entry fails the start."""
    try:
        return PriceList(
            currency=settings.currency,
            multiplier=settings.price_multiplier,
            overrides=parse_overrides(settings.prices or None),
            groups=parse_factors(settings.price_groups or None, "STILLMOTION_PRICE_GROUPS"),
        )
    except MoneyError as exc:
        raise ConfigurationError(str(exc)) from None


async def open_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    routes = resolve_routes(settings)
    price_list(settings)  # checked before anything is opened
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = await TaskStore.open(settings.db_url, cache_seconds=settings.task_cache_seconds)
    try:
        if migrate:
            await store.upgrade()
        secret = load_or_create_secret(data_dir / "signing.key")
    except BaseException:
        await store.close()  # its engines' pools and the batch writer's connection
        raise
    signer = UrlSigner(secret, settings.base_url, settings.url_ttl_seconds)
    storage = LocalStorage(data_dir / "files", signer)
    service = TaskService(
        store,
        storage,
        routes,
        max_attempts=settings.max_attempts,
        cancel_running=settings.cancel_running,
        prices=price_list(settings),
        billing=settings.billing == "on",
    )
    return Runtime(
        settings=settings,
        store=store,
        storage=storage,
        service=service,
        renderer=TaskRenderer(storage, settings.time_zone),
        keys=KeyVerifier(store, settings.key_cache_seconds),
    )


def _motion_options(settings: Settings) -> dict[str, Any]:
    return {"processes": max(1, settings.workers)}


def _dashscope_options(settings: Settings) -> dict[str, Any]:
    channels = [
        {k: v for k, v in c.model_dump().items() if v is not None}
        | ({"api_keys": c.api_keys.get_secret_value()} if c.api_keys is not None else {})
        for c in settings.dashscope_channels
    ]
    return {
        "base_url": settings.dashscope_base_url,
        "api_keys": settings.dashscope_api_keys.get_secret_value(),
        "max_in_flight": settings.dashscope_max_in_flight,
        "submit_rate": settings.dashscope_submit_rate,
        "query_rate": settings.dashscope_query_rate,
        "channels": channels,
        "model_map": settings.dashscope_model_map,
        "task_deadline": settings.dashscope_task_deadline,
        "poll_first": settings.dashscope_poll_first,
        "poll_max": settings.dashscope_poll_max,
        "max_poll_failures": settings.dashscope_max_poll_failures,
        "request_timeout": settings.dashscope_request_timeout,
        "allow_private": settings.dashscope_allow_private,
        "files_root": settings.data_dir / "files",  # where open_runtime's LocalStorage keeps inputs
    }


def _check_dashscope(settings: Settings, routes: dict[str, str]) -> None:
    """A model routed to the relay needs at least one DashScope key."""
    if "dashscope" not in routes.values():
        return
    keys = settings.dashscope_api_keys.get_secret_value().strip()
    if settings.dashscope_channels:
        keys = ",".join(
            (c.api_keys.get_secret_value() if c.api_keys is not None else keys)
            for c in settings.dashscope_channels
        ).strip(",")
    if not keys:
        raise ConfigurationError(
            "STILLMOTION_ROUTES sends models to the dashscope engine but no key is set "
            "(STILLMOTION_DASHSCOPE_API_KEYS or dashscope_channels[].api_keys)"
        )


def _wan_options(settings: Settings) -> dict[str, Any]:
    return {
        "weights_dir": settings.wan_weights_dir,
        "family": settings.wan_family,
        "steps": settings.wan_steps,
        "guidance": settings.wan_guidance,
        "guidance_2": settings.wan_guidance_2,
        "flow_shift": settings.wan_flow_shift,
        "dtype": settings.wan_dtype,
        "offload": settings.wan_offload,
        "attention": settings.wan_attention or None,
        "device": settings.wan_device,
        "max_area": settings.wan_max_area,
        "compile": settings.wan_compile,
    }


#: Per engine, the keyword options its factory gets from the settings. An engine not listed
#: here (a plugin) is created with no options and reads its own configuration.
ENGINE_OPTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "motion": _motion_options,
    "wan": _wan_options,
    "dashscope": _dashscope_options,
}


def build_engines(
    settings: Settings, names: list[str] | None = None, *, dedicated: bool = True
) -> dict[str, Engine]:
    """Create (and so check) the engines; a factory's set-up error fails the start.

    ``dedicated=False`` is the worker inside `serve`: it leaves out engines marked
    ``api_process = False`` (GPU engines), which run in a `stillmotion worker` process.
    """
    wanted = names or sorted(set(resolve_routes(settings).values()))
    engines: dict[str, Engine] = {}
    for name in wanted:
        if not dedicated and not getattr(load_factory(name), "api_process", True):
            log.warning(
                "engine %s does not run inside serve; start `stillmotion worker --engine %s`",
                name,
                name,
            )
            continue
        options = ENGINE_OPTIONS.get(name, lambda _: {})(settings)
        try:
            engines[name] = create_engine(name, **options)
        except ServiceError as exc:  # missing extra, weights, keys...
            raise ConfigurationError(exc.message) from None
    return engines


def build_worker(
    runtime: Runtime, engines: list[str] | None = None, *, dedicated: bool = False
) -> Worker:
    settings = runtime.settings
    config = RunnerConfig(
        work_root=Path(settings.data_dir) / "work",
        lease_seconds=settings.lease_seconds,
        allow_private_urls=settings.allow_private_urls,
        fetch_timeout=settings.fetch_timeout,
        fetch_max_redirects=settings.fetch_max_redirects,
    )
    return Worker(
        runtime.store,
        runtime.storage,
        build_engines(settings, engines, dedicated=dedicated),
        config,
        concurrency=settings.workers,
        poll_interval=settings.poll_interval,
        housekeeping=HousekeepingConfig(
            work_base=config.work_root,
            heartbeat_seconds=settings.worker_heartbeat_seconds,
            reap_seconds=settings.lease_seconds / 2,
            sweep_seconds=settings.sweep_interval_seconds,
            orphan_grace_seconds=settings.orphan_grace_seconds,
        ),
    )
