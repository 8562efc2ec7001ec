"""The hostile-image corpus against the real process: each upload gets the documented answer,
bombs are refused from their header without the server's memory moving, and `/healthz`
answers after every one."""

from __future__ import annotations

import pytest

from model.scheme_request import MIB
from tests.reliability.conftest import healthy, memory_bytes
from tests.reliability.corpus import Upload, hostile_uploads
from tests.server.test_segment import assert_leaves_paint_mask, error_of

pytestmark = pytest.mark.reliability

# A decoded bomb would need gigabytes; this much movement is the allocator's own noise.
BOMB_MEMORY_SLACK = 32 * MIB


def send(server, upload: Upload, query: str = "?scheme=pc"):
    if upload.files is not None:
        return server.http.post(f"/v1/segment{query}", files=upload.files)
    headers = {} if upload.content_type is None else {"content-type": upload.content_type}
    return server.http.post(f"/v1/segment{query}", content=upload.body, headers=headers)


@pytest.mark.parametrize("upload", hostile_uploads(), ids=lambda upload: upload.name)
def test_hostile_upload_gets_the_documented_answer(server, summary, upload):
    pid = server.process.pid
    rss_before, peak_before = memory_bytes(pid), memory_bytes(pid, "VmHWM")

    response = send(server, upload)

    rss_after, peak_after = memory_bytes(pid), memory_bytes(pid, "VmHWM")
    tried = summary.setdefault("hostile", {"tried": 0, "statuses": {}})
    tried["tried"] += 1
    tried["statuses"][str(response.status_code)] = (
        tried["statuses"].get(str(response.status_code), 0) + 1
    )
    assert healthy(server), f"the server did not survive {upload.name}"
    assert response.headers["content-type"] == "application/json"
    if upload.status != 200:
        error_of(response, upload.status, upload.code)
    else:
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == upload.size
        assert_leaves_paint_mask(body)
        if upload.same_as is not None:
            first = send(server, Upload("first frame", upload.same_as)).json()
            assert body["quadtree"] == first["quadtree"]
            assert body["mask"] == first["mask"]
    if upload.bomb:
        print(
            f"\n{upload.name}: RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB, "
            f"peak {peak_before / MIB:.1f} -> {peak_after / MIB:.1f} MiB"
        )
        assert peak_after - peak_before < BOMB_MEMORY_SLACK
        assert rss_after - rss_before < BOMB_MEMORY_SLACK
