"""The backend API of server-side documents: the compile service reads a document's current
source, the project service seeds documents from files. A change made here reaches the
project's connected clients live, as a `yjs_update` with origin `api`. DocumentService does the
work; this module only translates HTTP.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.responses import Response

from app.documents.document import invalid_update
from app.documents.editor import b64
from app.documents.store.base import DocumentKey
from app.errors import Refusal
from app.protocols.json.messages import MAX_DOCUMENT_ID
from app.routers.deps import DocumentsDep
from app.routers.errors import ErrorResponse
from app.routers.internal import ERRORS, ProjectId, ServiceDep, ServiceRoute, checked_project_id

BINARY = "application/octet-stream"
JSON = "application/json"

DocumentId = Annotated[
    str,
    Path(
        description=f"1-{MAX_DOCUMENT_ID} characters, `/` included (a file path such as "
        "`chapters/intro.tex`); percent-encode `%`, `?` and `#`"
    ),
]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_AUTH: dict[int | str, dict[str, Any]] = {401: ERRORS[401], 403: ERRORS[403]}
_IDS = "`invalid_project_id`, `invalid_document_id`"
_UNAVAILABLE = _error(
    "Nothing was done; retry later. `store_unavailable`: the document store does not answer, or "
    "too many changes wait for it; `document_unavailable`: the document cannot be loaded "
    "(the instance is restarting, holds MAX_RESIDENT_DOCUMENTS documents in use, or the stored "
    "state cannot be read)"
)
# FastAPI lists 422 for every route with parameters; this gives it the service's error shape.
_INVALID_REQUEST = _error("`invalid_request`: the body or a query parameter failed validation")
_TOO_LARGE = _error(
    "`payload_too_large`: the body is over MAX_BODY_BYTES (1 MiB by default; the connection "
    "is closed); `document_too_large`: the document would pass MAX_DOCUMENT_BYTES, nothing "
    "was applied"
)


class DocumentEntry(BaseModel):
    document_id: str
    stored_bytes: int = Field(description="The stored snapshot's length plus every later update's")
    updated_at: AwareDatetime = Field(description="When it was last stored (RFC 3339, UTC)")
    resident: bool = Field(description="Loaded on this instance: in use, or used recently")


class DocumentList(BaseModel):
    documents: list[DocumentEntry] = Field(description="Every stored document, by document_id")


class DocumentRead(BaseModel):
    document_id: str
    text: str = Field(description="The Y.Text named DOCUMENT_TEXT_NAME (`content` by default)")
    update: str = Field(
        description="The whole state as one Yjs update (v1 encoding), base64: apply it to an "
        "empty Y.Doc"
    )


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    update: str = Field(description="A Yjs update (v1 encoding), standard base64")


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The new document's text (may be empty)")


class DocumentChanged(BaseModel):
    document_id: str


router = APIRouter(prefix="/internal", tags=["documents"], route_class=ServiceRoute)


def _key(project_id: str, document_id: str) -> DocumentKey:
    if not 1 <= len(document_id) <= MAX_DOCUMENT_ID:
        raise Refusal(
            "invalid_document_id", f"expected a document id of 1-{MAX_DOCUMENT_ID} characters"
        )
    return DocumentKey(checked_project_id(project_id), document_id)


def _not_found() -> Refusal:
    return Refusal("document_not_found", "there is no such document", status=404)


def _wants_binary(output: str | None, accept: str | None) -> bool:
    """`?format=` decides; without it, the Accept header's preference between the two (JSON
    on a tie, and when it names neither)."""
    if output is not None:
        return output == "binary"
    quality: dict[str, float] = {}
    for item in (accept or "").split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        quality[media] = max(q, quality.get(media, 0.0))
    return quality.get(BINARY, 0.0) > quality.get(JSON, 0.0)


@router.get(
    "/projects/{project_id}/documents",
    response_model=DocumentList,
    summary="List the project's stored documents",
    responses={
        **_AUTH,
        400: _error("`invalid_project_id`"),
        422: _INVALID_REQUEST,
        503: _UNAVAILABLE,
    },
)
async def list_documents(
    project_id: ProjectId, service: ServiceDep, documents: DocumentsDep
) -> DocumentList:
    found = await documents.documents(checked_project_id(project_id))
    return DocumentList(
        documents=[
            DocumentEntry(
                document_id=summary.document_id,
                stored_bytes=summary.stored_bytes,
                updated_at=datetime.fromtimestamp(summary.updated_at, UTC),
                resident=summary.resident,
            )
            for summary in found
        ]
    )


@router.get(
    "/projects/{project_id}/documents/{document_id:path}",
    response_model=DocumentRead,
    summary="Read a document: its text and its whole state as a Yjs update",
    description="JSON by default; the raw update bytes with `?format=binary`, or with "
    "`Accept: application/octet-stream` (preferred over `application/json`) and no `format`.",
    responses={
        200: {
            "description": "The document",
            "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_AUTH,
        400: _error(_IDS),
        404: _error("`document_not_found`"),
        422: _INVALID_REQUEST,
        503: _UNAVAILABLE,
    },
)
async def read_document(
    project_id: ProjectId,
    document_id: DocumentId,
    service: ServiceDep,
    documents: DocumentsDep,
    response: Response,
    output: Annotated[
        Literal["json", "binary"] | None,
        Query(alias="format", description="`binary`: the update's bytes alone"),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> DocumentRead | Response:
    content = await documents.read(_key(project_id, document_id))
    if content is None:
        raise _not_found()
    # One URL, two representations: caches must key on Accept.
    if _wants_binary(output, accept):
        return Response(content.update, media_type=BINARY, headers={"Vary": "Accept"})
    response.headers["Vary"] = "Accept"
    return DocumentRead(document_id=document_id, text=content.text, update=b64(content.update))


@router.post(
    "/projects/{project_id}/documents/{document_id:path}/updates",
    response_model=DocumentChanged,
    summary="Apply a Yjs update to a document (created if new), relayed live to its clients",
    description="Answered once the update is stored. Connected clients receive it as a "
    "`yjs_update` with origin `api`. The whole JSON body must fit in MAX_BODY_BYTES (1 MiB by "
    "default, about 750 KiB of update): a larger update needs a larger MAX_BODY_BYTES, or goes "
    "through the WebSocket in parts (`yjs_update_part`).",
    responses={
        **_AUTH,
        400: _error(f"{_IDS}, `invalid_update` (not base64, or not a Yjs update: not applied)"),
        404: _error("`document_deleted`: deleted while this call waited"),
        408: ERRORS[408],
        413: _TOO_LARGE,
        422: _INVALID_REQUEST,
        503: _UNAVAILABLE,
    },
)
async def apply_update(
    project_id: ProjectId,
    document_id: DocumentId,
    body: UpdateBody,
    service: ServiceDep,
    documents: DocumentsDep,
) -> DocumentChanged:
    key = _key(project_id, document_id)
    try:
        update = base64.b64decode(body.update, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_update("its base64 does not decode") from None
    await documents.change(key, (service.user_id, service.username), update=update)
    return DocumentChanged(document_id=document_id)


@router.put(
    "/projects/{project_id}/documents/{document_id:path}",
    status_code=201,
    response_model=DocumentChanged,
    summary="Create a document from text, relayed live to its clients",
    description="Answered once it is stored. The text goes into the Y.Text named "
    "DOCUMENT_TEXT_NAME. The whole JSON body, escapes included, must fit in MAX_BODY_BYTES "
    "(1 MiB by default): a larger text needs a larger MAX_BODY_BYTES, or goes through the "
    "WebSocket in parts (`yjs_update_part`).",
    responses={
        **_AUTH,
        400: _error(f"{_IDS}, `invalid_text` (an unpaired surrogate: not Unicode)"),
        408: ERRORS[408],
        409: _error("`document_exists`: nothing was changed"),
        413: _TOO_LARGE,
        422: _INVALID_REQUEST,
        503: _UNAVAILABLE,
    },
)
async def create_document(
    project_id: ProjectId,
    document_id: DocumentId,
    body: Seed,
    service: ServiceDep,
    documents: DocumentsDep,
) -> DocumentChanged:
    key = _key(project_id, document_id)
    if not await documents.create(key, (service.user_id, service.username), body.text):
        raise Refusal("document_exists", "this document exists already", status=409)
    return DocumentChanged(document_id=document_id)


@router.delete(
    "/projects/{project_id}/documents/{document_id:path}",
    status_code=204,
    response_class=Response,
    summary="Delete a document",
    responses={
        **_AUTH,
        400: _error(_IDS),
        404: _error("`document_not_found`"),
        422: _INVALID_REQUEST,
        503: _UNAVAILABLE,
    },
)
async def delete_document(
    project_id: ProjectId, document_id: DocumentId, service: ServiceDep, documents: DocumentsDep
) -> None:
    if not await documents.delete(_key(project_id, document_id)):
        raise _not_found()
