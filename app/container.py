"""The dependency-injector container: the one place that turns Settings into services."""

from __future__ import annotations

from dependency_injector import containers, providers

from app.auth import AuthService
from app.broadcaster.memory import MemoryBroadcaster
from app.connection import BacklogLimits
from app.gatekeeper import Gatekeeper
from app.limits import ConnectionLimiter
from app.metrics import Metrics
from app.origins import OriginPolicy
from app.registry import RoomRegistry
from app.session import SessionHandler
from app.settings import Settings


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
    limiter = providers.Singleton(
        ConnectionLimiter, per_ip=settings.provided.max_connections_per_ip
    )
    gatekeeper = providers.Singleton(
        Gatekeeper, auth=auth, origins=origins, limiter=limiter, metrics=metrics
    )
    broadcaster = providers.Singleton(MemoryBroadcaster)
    registry = providers.Singleton(RoomRegistry, broadcaster=broadcaster, metrics=metrics)
    backlog_limits = providers.Singleton(
        BacklogLimits,
        messages=settings.provided.send_queue_limit,
        bytes=settings.provided.send_queue_bytes,
    )
    sessions = providers.Singleton(
        SessionHandler, registry=registry, metrics=metrics, limits=backlog_limits
    )
