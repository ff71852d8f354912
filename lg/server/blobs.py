"""PUT and GET /api/v1/blobs/{sha256}: the server's content-addressed blob store over HTTP (lg.runs.blobs).

A runner uploads a run's held effects and step logs here before it records what refers to them; a runner
resuming elsewhere downloads them. The name is the content's SHA-256 or the request is refused (400
bad_blob_name), bytes that do not hash to the name are refused (400 digest_mismatch) and nothing is stored;
uploading a blob that is already there is harmless (200 instead of 201).
"""

from __future__ import annotations

from lg.runs.blobs import BlobDamaged, BlobMissing, BlobRefused, BlobStore, check_name
from lg.server.call import Call, Reply
from lg.server.errors import ApiError, bad_request, not_found


def _name(call: Call) -> str:
    try:
        return check_name(call.params["sha256"])
    except BlobRefused as error:
        raise bad_request("bad_blob_name", str(error)) from None


def put_blob(call: Call) -> Reply:
    name = _name(call)
    data = call.body if isinstance(call.body, bytes) else b""
    try:
        created = BlobStore(call.config.blob_dir).put(name, [data])
    except BlobRefused as error:
        raise bad_request("digest_mismatch", str(error)) from None
    return Reply(data={"sha256": name, "size": len(data), "created": created}, status=201 if created else 200)


def get_blob(call: Call) -> Reply:
    name = _name(call)
    return blob_reply(call, name, not_found("unknown_blob", f"no blob {name} on this server"))


def blob_reply(call: Call, name: str, missing: ApiError) -> Reply:
    """Blob `name`'s bytes, checked against its name: `missing` when absent, 503 when altered on disk."""
    try:
        data = BlobStore(call.config.blob_dir).get(name)
    except BlobMissing:
        raise missing from None
    except BlobDamaged as error:
        raise ApiError(503, "blob_damaged", str(error)) from None
    return Reply(content=data, media_type="application/octet-stream", headers={"X-Content-SHA256": name})
