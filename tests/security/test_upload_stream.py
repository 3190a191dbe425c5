"""Battery item 10 additions (R-SAFE-4): a 1 GB upload stream is refused with 413 before it
is read whole; a Windows path in the file name is ignored (the POSIX one is in
tests/test_uploads.py)."""

import io
import time

import models
from tests.conftest import Browser
from tests.pdfs import scanned_pdf
from tests.test_uploads import paper_roi, upload

GIB = 1024 ** 3


class EndlessBody(io.RawIOBase):
    """A request body that claims 1 GB and makes its bytes only when read (counted)."""

    def __init__(self):
        self.read_bytes = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = len(buffer)
        buffer[:n] = b"A" * n
        self.read_bytes += n
        return n


def test_r_safe_4_one_gigabyte_stream_refused_before_reading(app, network):
    """R-SAFE-4: Content-Length of 1 GB on the upload route: 413 at once, the body not read
    (at most a few kilobytes), nothing changed."""
    roi = paper_roi(network)
    b = Browser(app)
    b.login(network.pr_a1)
    token = b.token(f"/consent/{roi.id}")
    body = EndlessBody()
    started = time.monotonic()
    response = b.client.post(
        f"/consent/{roi.id}/upload?csrf_token={token}", content_type="multipart/form-data; boundary=xyz",
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(GIB)})
    assert response.status_code == 413
    assert time.monotonic() - started < 5
    assert body.read_bytes < 1024 * 1024, body.read_bytes
    assert models.Roi.get_by_id(roi.id).attachment_path == ""


def test_r_safe_4_windows_path_in_file_name_ignored(app, network):
    """R-SAFE-4: C:\\Windows\\..\\evil.pdf keeps only its last part; the stored name is generated."""
    roi = paper_roi(network)
    b = Browser(app)
    b.login(network.pr_a1)
    upload(b, roi, scanned_pdf(), "C:\\Windows\\..\\evil.pdf")
    roi = models.Roi.get_by_id(roi.id)
    assert roi.attachment_path.startswith("roi-")
    assert "\\" not in roi.attachment_name and "/" not in roi.attachment_name
    assert roi.attachment_name.endswith("evil.pdf")
