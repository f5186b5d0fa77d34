"""Wiring: settings in, the store, storage, service, engines and worker out.

Used by the CLI, the API's lifespan and the tests; nothing below this layer imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stillmotion import catalog
from stillmotion.config import DashScopeChannel, OpenAIVideosChannel, Settings
from stillmotion.engines.base import Engine
from stillmotion.engines.registry import available, check_request, create_engine, load_factory
from stillmotion.engines.relay_limits import RelayLimits
from stillmotion.errors import ServiceError
from stillmotion.money import MoneyError, PriceList, parse_factors, parse_overrides
from stillmotion.storage.base import Storage, StorageUnavailable
from stillmotion.storage.local import LocalStorage
from stillmotion.storage.signing import UrlSigner, load_or_create_secret
from stillmotion.tasks.keys import KeyVerifier
from stillmotion.tasks.notify import Listener
from stillmotion.tasks.render import TaskRenderer
from stillmotion.tasks.service import TaskService
from stillmotion.tasks.store import TaskStore
from stillmotion.worker.housekeeping import HousekeepingConfig
from stillmotion.worker.runner import RunnerConfig
from stillmotion.worker.webhooks import WebhookConfig
from stillmotion.worker.worker import Worker

log = logging.getLogger("stillmotion")


class ConfigurationError(Exception):
    """A setting that cannot work; the CLI prints it and exits."""


@dataclass
class Runtime:
    settings: Settings
    store: TaskStore
    storage: Storage
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
        try:
            await self.store.close()
        finally:
            await self.storage.aclose()  # an object store's connection pool


def resolve_routes(settings: Settings) -> dict[str, str]:
    """``{model: engine}`` for every catalog model (the config's ``[[models]]`` installed
    first); unknown names fail at start."""
    try:
        catalog.install(settings.models)
    except catalog.CatalogError as exc:
        raise ConfigurationError(f"[[models]]: {exc}") from None
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
        signer = UrlSigner(signing_secret(settings), settings.base_url, settings.url_ttl_seconds)
        storage = await open_storage(settings, signer)
    except BaseException:
        await store.close()  # its engines' pools and the batch writer's connection
        raise
    service = TaskService(
        store,
        storage,
        routes,
        max_attempts=settings.max_attempts,
        cancel_running=settings.cancel_running,
        prices=price_list(settings),
        billing=settings.billing == "on",
        engine_check=check_request,
    )
    return Runtime(
        settings=settings,
        store=store,
        storage=storage,
        service=service,
        renderer=TaskRenderer(
            storage, settings.time_zone, result_ttl_seconds=settings.result_ttl_hours * 3600
        ),
        keys=KeyVerifier(store, settings.key_cache_seconds),
    )


def signing_secret(settings: Settings) -> bytes:
    """``signing_secret``, else ``signing_secret_file``, else ``<data_dir>/signing.key`` (made
    on first start): every API process behind one address must use the same one."""
    if settings.signing_secret is not None and settings.signing_secret_file is not None:
        raise ConfigurationError(
            "set STILLMOTION_SIGNING_SECRET or STILLMOTION_SIGNING_SECRET_FILE, not both"
        )
    if settings.signing_secret is not None:
        secret = settings.signing_secret.get_secret_value().strip().encode()
        where = "STILLMOTION_SIGNING_SECRET"
    elif settings.signing_secret_file is not None:
        path = settings.signing_secret_file.expanduser()
        where = f"STILLMOTION_SIGNING_SECRET_FILE ({path})"
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(f"{where} cannot be read: {exc.strerror}") from None
    else:
        return load_or_create_secret(settings.data_dir / "signing.key")
    if len(secret) < 32:
        raise ConfigurationError(f"{where} is too short: use 32 characters or more")
    return secret


async def open_storage(settings: Settings, signer: UrlSigner) -> Storage:
    """The store named by ``storage_url`` (default ``<data_dir>/files``); an ``s3://`` bucket
    is checked here, so a wrong one fails the start."""
    url = settings.storage_url or ""
    if settings.storage_public == "presigned" and not url.startswith("s3://"):
        raise ConfigurationError("STILLMOTION_STORAGE_PUBLIC=presigned needs an s3:// storage_url")
    if not url:
        return LocalStorage(settings.data_dir / "files", signer)
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(f"STILLMOTION_STORAGE_URL {url!r} is not file:///path")
        return LocalStorage(Path(unquote(parts.path)), signer)
    if not url.startswith("s3://"):
        raise ConfigurationError(
            f"STILLMOTION_STORAGE_URL {url!r}: use file:///path or s3://bucket/prefix"
        )
    try:
        from stillmotion.storage.s3 import S3Storage

        return await S3Storage.open(
            url,
            signer,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            public=settings.storage_public,
            url_ttl=settings.url_ttl_seconds,
        )
    except StorageUnavailable as exc:
        raise ConfigurationError(str(exc)) from None


def _motion_options(settings: Settings) -> dict[str, Any]:
    return {"processes": max(1, settings.workers)}


def _channels(configured: Sequence[DashScopeChannel | OpenAIVideosChannel]) -> list[dict[str, Any]]:
    """A relay's channel list as its engine takes it: set fields only, keys revealed."""
    return [
        {k: v for k, v in c.model_dump().items() if v is not None}
        | ({"api_keys": c.api_keys.get_secret_value()} if c.api_keys is not None else {})
        for c in configured
    ]


def _dashscope_options(settings: Settings) -> dict[str, Any]:
    channels = _channels(settings.dashscope_channels)
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
        # stored inputs: build_engines hands the engine the runtime's storage instead
        "files_root": settings.data_dir / "files" if not settings.storage_url else None,
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


def _openai_videos_options(settings: Settings) -> dict[str, Any]:
    channels = _channels(settings.openai_videos_channels)
    return {
        "base_url": settings.openai_videos_base_url,
        "api_keys": settings.openai_videos_api_keys.get_secret_value(),
        "max_in_flight": settings.openai_videos_max_in_flight,
        "submit_rate": settings.openai_videos_submit_rate,
        "query_rate": settings.openai_videos_query_rate,
        "channels": channels,
        "model_map": settings.openai_videos_model_map,
        "fps": settings.openai_videos_fps,
        "body": settings.openai_videos_body,
        "task_deadline": settings.openai_videos_task_deadline,
        "poll_first": settings.openai_videos_poll_first,
        "poll_max": settings.openai_videos_poll_max,
        "max_poll_failures": settings.openai_videos_max_poll_failures,
        "request_timeout": settings.openai_videos_request_timeout,
        "allow_private": settings.openai_videos_allow_private,
    }


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
    "openai-videos": _openai_videos_options,
}

#: Relay engines: their caps and rates are kept where ``relay_limits`` says.
RELAYS = frozenset({"dashscope", "openai-videos"})


def build_engines(
    settings: Settings,
    names: list[str] | None = None,
    *,
    dedicated: bool = True,
    storage: Storage | None = None,
    store: TaskStore | None = None,
) -> dict[str, Engine]:
    """Create (and so check) the engines; a factory's set-up error fails the start.

    With ``store``, relays keep their caps and rates where ``relay_limits`` says (in the
    database: shared by every worker process); without it, in this process.

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
        if name == "dashscope" and storage is not None:  # the relay re-sends stored inputs
            options["read_input"] = storage.read_bytes
        if name in RELAYS and store is not None:
            options["limits"] = relay_limits(settings, store)
        try:
            engines[name] = create_engine(name, **options)
        except ServiceError as exc:  # missing extra, weights, keys...
            raise ConfigurationError(exc.message) from None
    return engines


def relay_limits(settings: Settings, store: TaskStore) -> RelayLimits | None:
    """The store's shared limits when ``relay_limits`` asks for them (None: local)."""
    mode = settings.relay_limits
    if mode == "database" or (mode == "auto" and store.dialect == "postgresql"):
        return store.relay_limits
    return None


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
        build_engines(
            settings, engines, dedicated=dedicated, storage=runtime.storage, store=runtime.store
        ),
        config,
        concurrency=settings.workers,
        poll_interval=settings.poll_interval,
        housekeeping=HousekeepingConfig(
            work_base=config.work_root,
            heartbeat_seconds=settings.worker_heartbeat_seconds,
            reap_seconds=settings.lease_seconds / 2,
            sweep_seconds=settings.sweep_interval_seconds,
            orphan_grace_seconds=settings.orphan_grace_seconds,
            result_ttl_hours=settings.result_ttl_hours,
            task_ttl_days=settings.task_ttl_days or None,
            retention_batch=settings.retention_batch,
        ),
        render=runtime.renderer.body,
        webhooks=WebhookConfig(
            timeout=settings.webhook_timeout,
            max_age=settings.webhook_max_age_seconds,
            backoff=settings.webhook_backoff_seconds,
            poll_interval=max(settings.poll_interval, 0.05),
            allow_private=settings.allow_private_urls,
        ),
    )
