"""FastAPI dependencies that hand routes their services from the app's own container.

The container hangs off `app.state` rather than being wired into module globals, so two apps
in one process (tests, or a cluster simulated in one process) never share services.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.admission.auth import AuthService
from app.broadcaster.base import Broadcaster
from app.container import Container
from app.documents.service import DocumentService
from app.documents.writer import DocumentWriter
from app.rooms.registry import RoomRegistry


def container_of(connection: HTTPConnection) -> Container:
    container: Container = connection.app.state.container
    return container


def _auth(connection: HTTPConnection) -> AuthService:
    return container_of(connection).auth()


def _registry(connection: HTTPConnection) -> RoomRegistry:
    return container_of(connection).registry()


def _broadcaster(connection: HTTPConnection) -> Broadcaster:
    return container_of(connection).broadcaster()


def _documents(connection: HTTPConnection) -> DocumentService:
    return container_of(connection).documents()


def _writer(connection: HTTPConnection) -> DocumentWriter:
    return container_of(connection).document_writer()


def _stats_role(connection: HTTPConnection) -> str | None:
    role: str | None = container_of(connection).settings().stats_required_role
    return role


AuthDep = Annotated[AuthService, Depends(_auth)]
RegistryDep = Annotated[RoomRegistry, Depends(_registry)]
BroadcasterDep = Annotated[Broadcaster, Depends(_broadcaster)]
DocumentsDep = Annotated[DocumentService, Depends(_documents)]
StatsRoleDep = Annotated[str | None, Depends(_stats_role)]
WriterDep = Annotated[DocumentWriter, Depends(_writer)]
