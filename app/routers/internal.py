"""The service-to-service API: backend services publish events and revoke access."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError
from starlette.responses import Response

from app.admission.auth import AuthService, Identity
from app.admission.gatekeeper import PROJECT_ID
from app.errors import Refusal
from app.protocols.json.messages import OpenPayload
from app.routers.deps import AuthDep, RegistryDep, container_of
from app.routers.errors import ErrorResponse

SERVICE_ROLE = "service"
# Where the identity verified before the body was read waits for the route's own dependency.
_VERIFIED_SERVICE = "texflow.service_identity"

service_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="serviceAuth",
    description="A JWT whose `roles` claim contains `service`; users' tokens get 403.",
)

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "Invalid project id"},
    401: {"model": ErrorResponse, "description": "Missing or invalid token"},
    403: {"model": ErrorResponse, "description": "The token has no `service` role"},
    408: {"model": ErrorResponse, "description": "The body did not arrive within BODY_TIMEOUT"},
    413: {"model": ErrorResponse, "description": "Body over MAX_BODY_BYTES (1 MiB by default)"},
}


def service_identity(
    auth: AuthDep,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(service_bearer)],
) -> Identity:
    verified = request.scope.get(_VERIFIED_SERVICE)
    if isinstance(verified, Identity):
        return verified
    identity = auth.verify(credentials.credentials if credentials else None)
    if SERVICE_ROLE not in identity.roles:
        raise Refusal(
            "forbidden", "this endpoint is for services: expected role 'service'", status=403
        )
    request.scope[_VERIFIED_SERVICE] = identity
    return identity


class ServiceRoute(APIRoute):
    """A route that checks for the `service` role before anything reads the request body.

    FastAPI reads and parses a route's body before it solves any dependency, the service check
    included, so an anonymous caller could make an instance hold a whole body only to be told
    401. Checking first means a refused caller costs no body at all; the body parameters stay
    ordinary FastAPI ones, so validation and the OpenAPI document are unchanged.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def service_first(request: Request) -> Response:
            auth: AuthService = container_of(request).auth()
            service_identity(auth, request, await service_bearer(request))
            return await handler(request)

        return service_first


ServiceDep = Annotated[Identity, Depends(service_identity)]
ProjectId = Annotated[str, Path(description="1-128 characters of A-Z a-z 0-9 _ . -")]


def checked_project_id(project_id: str) -> str:
    if PROJECT_ID.fullmatch(project_id) is None:
        raise Refusal(
            "invalid_project_id",
            "expected a project id of 1-128 characters from A-Z a-z 0-9 _ . -",
        )
    return project_id


class ProjectEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[
        "compilation_started", "compilation_completed", "compilation_failed", "document_update"
    ]
    payload: OpenPayload = Field(default_factory=OpenPayload)


class EventAccepted(BaseModel):
    local_recipients: int = Field(description="Connections on this instance that got it")


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)


class RevocationAccepted(BaseModel):
    closed_locally: int = Field(description="Connections this instance closed with 4003")


router = APIRouter(prefix="/internal", tags=["internal"], route_class=ServiceRoute)


@router.post(
    "/projects/{project_id}/events",
    status_code=202,
    response_model=EventAccepted,
    summary="Publish an event to every connection of the project, on every instance",
    responses=ERRORS,
)
async def publish_event(
    project_id: ProjectId, event: ProjectEvent, service: ServiceDep, registry: RegistryDep
) -> EventAccepted:
    try:
        delivered = registry.publish_event(
            checked_project_id(project_id),
            event.type,
            event.payload.relay(),
            user_id=service.user_id,
            username=service.username,
        )
    except PydanticSerializationError:
        # Python's JSON parser takes lone surrogates ("\ud800"), which no UTF-8 can carry.
        raise Refusal(
            "invalid_request",
            "the request failed validation: text must be valid Unicode",
            status=422,
        ) from None
    return EventAccepted(local_recipients=delivered)


@router.post(
    "/projects/{project_id}/disconnect",
    status_code=202,
    response_model=RevocationAccepted,
    summary="Close a user's connections in the project with 4003, on every instance",
    responses=ERRORS,
)
async def disconnect_user(
    project_id: ProjectId, body: Revocation, service: ServiceDep, registry: RegistryDep
) -> RevocationAccepted:
    return RevocationAccepted(
        closed_locally=registry.revoke(checked_project_id(project_id), body.user_id)
    )
