"""Open Inference Protocol bodies <-> the server's image and prediction, binary data included.

A request body is a JSON object (`server.v2_schemas.InferRequest`), optionally followed by the
bytes of its tensor: the header `Inference-Header-Content-Length` says where the JSON ends and
the input's `parameters.binary_data_size` how many bytes follow (the binary data extension). A
BYTES tensor's binary data is, per element, a 4-byte little-endian length and the bytes; in
JSON a BYTES element is a string, so an encoded image travels as base64 with the input
parameter `content_type: "base64"`. UINT8 pixels travel raw, or as JSON numbers.

Every check here is on sizes and shapes, made before an image is decoded (`server.images`
decodes, with its own header-first pixel check).
Responses are written the same way, their outputs binary when the request asks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from model.qgn import Prediction
from server.auto import AutoChoice
from server.errors import ApiError, validation_error
from server.images import PendingImage, check_pixels, check_upload_size, open_upload
from server.v2_schemas import InferInput, InferRequest, RequestedOutput

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUTS = ("mask", "leaves")


@dataclass
class ParsedRequest:
    """The validated JSON part and the binary data of its one input (None: in the JSON)."""

    request: InferRequest
    binary: bytes | None

    @property
    def image(self) -> InferInput:
        return self.request.inputs[0]


def bad_tensor(message: str) -> ApiError:
    return ApiError("bad_tensor", message)


def parse_request(body: bytes, header_length: int | None) -> ParsedRequest:
    """Splits the JSON from the binary data and validates both against each other (400)."""
    if header_length is not None and header_length > len(body):
        raise bad_tensor(
            f"{HEADER_LENGTH} is {header_length}, but the body has only {len(body)} bytes"
        )
    split = len(body) if header_length is None else header_length
    try:
        request = InferRequest.model_validate_json(body[:split])
    except ValidationError as error:
        raise validation_error(error) from None
    binary = body[split:]
    tensor = request.inputs[0]
    size = tensor.parameters.binary_data_size
    if size is None:
        if binary:
            raise bad_tensor(
                f"{len(binary)} bytes follow the JSON, but input 'image' has no "
                f"parameters.binary_data_size"
            )
        if tensor.data is None:
            raise bad_tensor("input 'image' has neither data nor parameters.binary_data_size")
    else:
        if tensor.data is not None:
            raise bad_tensor("input 'image' has both data and parameters.binary_data_size")
        if size != len(binary):
            raise bad_tensor(
                f"input 'image' declares binary_data_size={size}, but {len(binary)} bytes "
                f"follow the JSON ({HEADER_LENGTH}={header_length})"
            )
    names = [output.name for output in request.outputs or ()]
    for name in set(names):
        if names.count(name) > 1:
            raise bad_tensor(f"output {name!r} is asked for {names.count(name)} times")
    return ParsedRequest(request, binary if size is not None else None)


def image_of(parsed: ParsedRequest, max_upload_bytes: int, max_pixels: int) -> PendingImage:
    """The image of a BYTES [1] input (an encoded image, decoded by `server.images` when the
    request is admitted) or of a UINT8 [H, W, 3] one (400; 413 over the upload or pixel
    limit, judged before anything is decoded)."""
    tensor = parsed.image
    if tensor.datatype == "BYTES":
        if tensor.shape != [1]:
            raise bad_tensor(f"a BYTES image has shape [1] (one encoded image), not {tensor.shape}")
        data = _bytes_element(parsed)
        check_upload_size(len(data), max_upload_bytes)
        return open_upload(data, max_pixels)
    if len(tensor.shape) != 3 or tensor.shape[2] != 3:
        raise bad_tensor(f"a UINT8 image has shape [H, W, 3] (RGB pixels), not {tensor.shape}")
    height, width, _ = tensor.shape
    if height * width == 0:
        raise bad_tensor(f"the image has no pixels ({width}×{height})")
    check_pixels(width, height, max_pixels)
    if parsed.binary is not None:
        if len(parsed.binary) != height * width * 3:
            raise bad_tensor(
                f"a UINT8 [{height}, {width}, 3] tensor has {height * width * 3} bytes, "
                f"not {len(parsed.binary)}"
            )
        pixels = np.frombuffer(parsed.binary, dtype=np.uint8).reshape(height, width, 3).copy()
        return PendingImage.of(pixels)
    return PendingImage.of(_pixels_from_json(tensor.data, height, width))


def _bytes_element(parsed: ParsedRequest) -> bytes:
    if parsed.binary is not None:
        raw = parsed.binary
        if len(raw) < 4 or int.from_bytes(raw[:4], "little") != len(raw) - 4:
            raise bad_tensor(
                f"the binary data of a BYTES [1] tensor is a 4-byte little-endian length and "
                f"that many bytes; these {len(raw)} bytes are not"
            )
        return raw[4:]
    tensor = parsed.image
    if tensor.parameters.content_type != "base64":
        raise bad_tensor(
            "an encoded image in JSON must be base64, with the input parameter "
            "content_type: 'base64'; or send it as binary data"
        )
    if len(tensor.data) != 1 or not isinstance(tensor.data[0], str):
        raise bad_tensor("the data of a BYTES [1] tensor is one string (the base64 image)")
    try:
        return base64.b64decode(tensor.data[0], validate=True)
    except binascii.Error as error:
        raise bad_tensor(f"the image is not valid base64: {error}") from None


def _pixels_from_json(data: list, height: int, width: int) -> np.ndarray:
    try:
        pixels = np.array(data)
    except ValueError:  # ragged nesting
        raise bad_tensor("the data of a UINT8 tensor is a (nested) list of equal rows") from None
    if pixels.size != height * width * 3:
        raise bad_tensor(
            f"a UINT8 [{height}, {width}, 3] tensor has {height * width * 3} values, "
            f"not {pixels.size}"
        )
    if pixels.dtype.kind not in "iu" or pixels.min() < 0 or pixels.max() > 255:
        raise bad_tensor("the data of a UINT8 tensor are integers from 0 to 255")
    return pixels.astype(np.uint8).reshape(height, width, 3)


def response_parameters(
    prediction: Prediction, auto: AutoChoice | None = None
) -> dict[str, str | int | float | bool]:
    """What ran and what it cost, as the protocol's scalar parameters; what scheme=auto chose
    and why as flat `auto_*` ones."""
    ran = prediction.scheme
    parameters: dict[str, str | int | float | bool] = {"scheme": ran.name}
    if ran.threshold is not None:
        parameters["threshold"] = ran.threshold
    if ran.budget_mb is not None:
        parameters["budget_mb"] = ran.budget_mb
    if auto is not None:
        parameters |= {f"auto_{key}": value for key, value in auto.as_dict().items()}
    return parameters | {
        "capped": ran.capped,
        "degraded": ran.degraded,
        "peak_memory_bytes": prediction.peak_bytes,
        "latency_ms": round(prediction.latency_s * 1000, 3),
        "device": prediction.device,
        "active_sites": ",".join(str(sites) for sites in prediction.active_sites),
    }


def encode_response(
    request: InferRequest,
    prediction: Prediction,
    model_name: str,
    model_version: str,
    auto: AutoChoice | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, followed by the binary outputs if any."""
    tensors = {
        "mask": ("UINT8", prediction.mask.numpy().astype(np.uint8)),
        "leaves": ("INT32", prediction.leaves.numpy().astype("<i4")),
    }
    wanted = request.outputs or [RequestedOutput(name=name) for name in OUTPUTS]
    outputs, chunks = [], []
    for output in wanted:
        datatype, array = tensors[output.name]
        tensor = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        binary = output.parameters.binary_data
        if binary is None:
            binary = request.parameters.binary_data_output
        if binary:
            chunks.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = array.ravel().tolist()
        outputs.append(tensor)
    body = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    body |= {"parameters": response_parameters(prediction, auto), "outputs": outputs}
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(chunks), headers
