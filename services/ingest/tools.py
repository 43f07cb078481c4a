"""``POST /tools/signature-generator``: sign a payload the way the original service did."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from services.ingest.errors import error_responses
from services.ingest.schemas import SignatureOut, SignatureRequest
from services.ingest.tenancy import caller
from shared.signing import hub_signature, legacy_body

# Any valid key: the tool reads no stored data.
router = APIRouter(prefix="/tools", tags=["tools"], dependencies=[Depends(caller)])


def sign_payload(request: SignatureRequest) -> SignatureOut:
    """The signed body is ``json.dumps(payload)``: send exactly that string as the body."""
    body = legacy_body(request.payload)
    return SignatureOut(
        x_hub_signature_256=hub_signature(request.secret_key, body), signed_body=body.decode()
    )


@router.post(
    "/signature-generator",
    response_model=SignatureOut,
    summary="Compute x-hub-signature-256 for a payload and show the exact body it signs",
    responses=error_responses(400, 401, 422),
)
async def signature_generator(request: SignatureRequest) -> SignatureOut:
    return sign_payload(request)
