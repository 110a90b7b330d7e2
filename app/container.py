"""The dependency-injector container: the one place that turns Settings into services."""

from __future__ import annotations

from pathlib import Path

from dependency_injector import containers, providers
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.admission.auth import AuthService
from app.admission.gatekeeper import Gatekeeper
from app.admission.limits import ConnectionLimiter
from app.admission.origins import OriginPolicy
from app.admission.proxies import ClientAddressResolver
from app.admission.revocations import Revocations
from app.broadcaster.base import Broadcaster
from app.broadcaster.memory import MemoryBroadcaster
from app.broadcaster.redis import RedisBroadcaster
from app.documents.hooks import DocumentHooks
from app.documents.library import DocumentLibrary
from app.documents.service import DocumentService
from app.documents.store.base import DocumentStore
from app.documents.store.memory import MemoryStore
from app.documents.store.postgres import PostgresStore
from app.documents.store.sqlite import SqliteStore
from app.documents.writer import DocumentWriter
from app.fanout.connection import BacklogLimits
from app.metrics import Metrics
from app.protocols.json.codec import JsonCodec, JsonRoutes
from app.protocols.ywebsocket.codec import YWebsocketRoutes, permission_denied
from app.reclaimer import Reclaimer
from app.rooms.registry import RoomRegistry
from app.routers.ws import SocketEndpoint
from app.session.handler import SessionHandler, SessionLimits
from app.session.keepalive import KeepAlive
from app.session.refusal_hold import RefusalHold
from app.settings import POSTGRES_SCHEMES, Settings


def redis_client(addr: str, password: str | None) -> Redis:
    """A client for `host:port` or a `redis://` URL. It never retries on its own: the
    broadcaster decides what a failure means and reconnects with backoff."""
    options = {
        "password": password,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }
    if "://" in addr:
        return Redis.from_url(addr, **options)  # type: ignore[arg-type]
    host, _, port = addr.rpartition(":")
    return Redis(host=host.strip("[]") or "localhost", port=int(port or 6379), **options)  # type: ignore[arg-type]


def broadcaster_for(settings: Settings, metrics: Metrics) -> Broadcaster:
    metrics.broadcaster_info.labels("redis" if settings.redis_addr else "memory").set(1)
    if not settings.redis_addr:
        return MemoryBroadcaster(instance_id=settings.instance_id)
    return RedisBroadcaster(
        redis_client(settings.redis_addr, settings.redis_password),
        metrics,
        prefix=settings.redis_prefix,
        presence_ttl=settings.presence_ttl,
        instance_id=settings.instance_id,
        wire_version=settings.wire_version,
    )


def store_for(settings: Settings) -> DocumentStore:
    if settings.document_store == "memory":
        return MemoryStore()
    if settings.document_store.startswith(POSTGRES_SCHEMES):
        return PostgresStore(settings.document_store)
    path = Path(settings.document_store.removeprefix("sqlite:///"))
    return SqliteStore(path)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    metrics = providers.Singleton(Metrics)
    auth = providers.Singleton(
        AuthService,
        hs256_secret=settings.provided.jwt_secret,
        rs256_public_key=settings.provided.jwt_public_key,
        leeway=settings.provided.jwt_leeway,
    )
    origins = providers.Singleton(OriginPolicy, allowed=settings.provided.effective_origins)
    ip_limiter = providers.Singleton(
        ConnectionLimiter, limit=settings.provided.max_connections_per_ip
    )
    user_limiter = providers.Singleton(
        ConnectionLimiter, limit=settings.provided.max_connections_per_user
    )
    addresses = providers.Singleton(
        ClientAddressResolver, trusted=settings.provided.trusted_proxies
    )
    broadcaster = providers.Singleton(broadcaster_for, settings=settings, metrics=metrics)
    document_store = providers.Singleton(store_for, settings=settings)
    document_writer = providers.Singleton(
        DocumentWriter,
        store=document_store,
        metrics=metrics,
        max_pending_bytes=settings.provided.document_pending_bytes,
        compact_every=settings.provided.document_compact_every,
    )
    library = providers.Singleton(
        DocumentLibrary,
        store=document_store,
        writer=document_writer,
        metrics=metrics,
        text_name=settings.provided.document_text_name,
        grace=settings.provided.document_grace,
        max_resident=settings.provided.max_resident_documents,
        catch_up_interval=settings.provided.document_catch_up_interval,
    )
    document_hooks = providers.Singleton(DocumentHooks, library=library)
    revocations = providers.Singleton(Revocations, memory=settings.provided.revocation_memory)
    registry = providers.Singleton(
        RoomRegistry,
        broadcaster=broadcaster,
        metrics=metrics,
        hooks=document_hooks,
        grace=settings.provided.room_grace,
        revocations=revocations,
    )
    documents = providers.Singleton(
        DocumentService,
        library=library,
        registry=registry,
        max_document_bytes=settings.provided.max_document_bytes,
    )
    reclaimer = providers.Singleton(
        Reclaimer,
        census=ip_limiter,
        gate=registry,
        min_interval=settings.provided.memory_reclaim_interval,
    )
    gatekeeper = providers.Singleton(
        Gatekeeper,
        auth=auth,
        origins=origins,
        ip_limiter=ip_limiter,
        user_limiter=user_limiter,
        addresses=addresses,
        metrics=metrics,
        registry=registry,
        revocations=revocations,
    )
    backlog_limits = providers.Singleton(
        BacklogLimits,
        messages=settings.provided.send_queue_limit,
        bytes=settings.provided.send_queue_bytes,
    )
    session_limits = providers.Singleton(
        SessionLimits,
        rate_per_second=settings.provided.rate_limit_per_second,
        burst=settings.provided.rate_limit_burst,
        max_strikes=settings.provided.abuse_max_strikes,
        strike_window=settings.provided.abuse_window,
        expiry_warning=settings.provided.token_expiry_warning,
        leeway=settings.provided.jwt_leeway,
    )
    keepalive = providers.Singleton(KeepAlive, interval=settings.provided.yjs_keepalive)
    sessions = providers.Singleton(
        SessionHandler,
        registry=registry,
        metrics=metrics,
        auth=auth,
        backlog=backlog_limits,
        limits=session_limits,
        documents=documents,
        keepalive=keepalive,
    )
    json_codec = providers.Singleton(JsonCodec)
    refusal_hold = providers.Singleton(
        RefusalHold,
        ip_limiter=ip_limiter,
        metrics=metrics,
        hold=settings.provided.yjs_refusal_hold,
        message=permission_denied,
    )
    # The one table of WebSocket routes: a path prefix per wire protocol.
    sockets = providers.Dict(
        {
            "/ws/": providers.Singleton(
                SocketEndpoint,
                gatekeeper=gatekeeper,
                sessions=sessions,
                route=providers.Singleton(JsonRoutes, codec=json_codec),
                protocol="json",
            ),
            "/yjs/": providers.Singleton(
                SocketEndpoint,
                gatekeeper=gatekeeper,
                sessions=sessions,
                route=providers.Singleton(YWebsocketRoutes),
                protocol="ywebsocket",
                max_frame_bytes=settings.provided.yjs_frame_bytes,
                hold=refusal_hold,
            ),
        }
    )
