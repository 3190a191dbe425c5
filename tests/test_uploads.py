"""Uploaded ROI scans (R-ROI-7, R-SAFE-4): an abuse corpus made here is refused, a
genuine scanned-style PDF is accepted, stored under a generated name, served only as an
attachment to users who may see the ROI; replace and delete are audited."""

import io
import os
import zlib

import pytest
from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, TextStringObject

import models
import uploads
import workflow
from tests.conftest import actor, make_subject, make_user
from tests.pdfs import build_pdf, scanned_pdf, stream

LIMIT = 10 * 1024 * 1024


def javascript_in_object_stream():
    """The catalog and a JavaScript OpenAction live only inside a compressed object
    stream, with a cross-reference stream: no byte search can see them."""
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>"
    action = b"<< /S /JavaScript /JS (app.alert\\(1\\)) >>"
    header = b"1 0 5 %d " % (len(catalog) + 1)
    packed = zlib.compress(header + catalog + b"\n" + action)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    regular = {
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        4: stream(b"<< /Type /ObjStm /N 2 /First %d /Filter /FlateDecode >>" % len(header), packed),
    }
    for number, body in regular.items():
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    offsets[6] = len(out)
    rows = [(0, 0, 65535), (2, 4, 0), (1, offsets[2], 0), (1, offsets[3], 0), (1, offsets[4], 0),
            (2, 4, 1), (1, offsets[6], 0)]
    table = b"".join(bytes([kind]) + field.to_bytes(4, "big") + extra.to_bytes(2, "big")
                     for kind, field, extra in rows)
    xref = stream(b"<< /Type /XRef /Size 7 /W [1 4 2] /Root 1 0 R /Filter /FlateDecode >>",
                  zlib.compress(table))
    out += b"6 0 obj\n" + xref + b"\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % offsets[6]
    return bytes(out)


def pypdf_writer():
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    return writer


def written(writer):
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def with_open_action(action):
    writer = pypdf_writer()
    writer._root_object[NameObject("/OpenAction")] = writer._add_object(DictionaryObject(action))
    return written(writer)


def openaction_javascript():
    return with_open_action({NameObject("/S"): NameObject("/JavaScript"),
                             NameObject("/JS"): TextStringObject("app.alert(1)")})


def launch_action():
    return with_open_action({NameObject("/S"): NameObject("/Launch"),
                             NameObject("/F"): TextStringObject("calc.exe")})


def embedded_file():
    writer = pypdf_writer()
    writer.add_attachment("payload.txt", b"hello")
    return written(writer)


def names_javascript():
    writer = pypdf_writer()
    writer.add_js("app.alert('x');")
    return written(writer)


def encrypted():
    writer = pypdf_writer()
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    return written(writer)


def hex_escaped_name():
    """/J#61vaScript is /JavaScript once the #-escape is decoded."""
    return build_pdf([b"<< /Type /Catalog /Pages 2 0 R /OpenAction 4 0 R >>",
                      b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                      b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
                      b"<< /S /J#61vaScript /J#53 (app.alert\\(1\\)) >>"])


CORPUS = {
    "png_renamed": (lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(2000), "not a PDF"),
    "html": (lambda: b"<!DOCTYPE html><html><script>alert(1)</script></html>", "not a PDF"),
    "html_after_eof": (lambda: scanned_pdf() + b"<html><script>alert(1)</script></html>\n",
                       "extra content after its end"),
    "openaction_javascript": (openaction_javascript, "scripts"),
    "names_javascript": (names_javascript, "scripts"),
    "javascript_in_object_stream": (javascript_in_object_stream, "scripts"),
    "hex_escaped_javascript": (hex_escaped_name, "scripts"),
    "launch": (launch_action, "scripts"),
    "embedded_file": (embedded_file, "scripts"),
    "encrypted": (encrypted, "password-protected"),
    "truncated": (lambda: scanned_pdf()[: len(scanned_pdf()) // 2], "incomplete"),
    "eleven_mb": (lambda: scanned_pdf()[:-6] + b"%" + b" " * (11 * 1024 * 1024) + b"\n%%EOF\n",
                  "larger than 10 MB"),
    "empty": (lambda: b"", "Choose a PDF"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_r_safe_4_abuse_corpus_refused(name):
    """R-SAFE-4: each sample of the corpus is refused with a clear sentence."""
    make, message = CORPUS[name]
    with pytest.raises(uploads.UploadRefused, match=message):
        uploads.check_pdf(make(), LIMIT)


def test_r_safe_4_object_stream_needs_parsing():
    """R-SAFE-4: the object-stream sample passes the byte search; parsing catches it."""
    data = javascript_in_object_stream()
    assert uploads._byte_scan(data) is None
    with pytest.raises(uploads.UploadRefused, match="scripts"):
        uploads.check_pdf(data, LIMIT)


@pytest.mark.parametrize("make", [scanned_pdf, lambda: written(pypdf_writer())])
def test_r_safe_4_genuine_pdf_accepted(make):
    """R-SAFE-4: a genuine scanned-style PDF (and a plain pypdf one) is accepted."""
    assert uploads.check_pdf(make(), LIMIT) == 1


def test_r_safe_4_limit_is_a_setting():
    """R-SAFE-4: the size limit comes from the setting (10 MB by default)."""
    data = scanned_pdf()
    with pytest.raises(uploads.UploadRefused):
        uploads.check_pdf(data, len(data) - 1)


@pytest.mark.parametrize("name, ok", [("roi-" + "a" * 32 + ".pdf", True), ("../../etc/passwd", False),
                                      ("roi-abc.pdf", False), ("", False)])
def test_r_safe_4_only_generated_names_resolve(name, ok):
    """R-SAFE-4: stored files have generated names; nothing else maps to a path."""
    assert (uploads.path_of(name, "/tmp/x") is not None) is ok


# --- through the screens -----------------------------------------------------------------

def paper_roi(network):
    subject = make_subject(network.a1)
    who = actor(network.pr_a1, network.a1)
    roi = workflow.start_roi(who, subject, [network.b1.id])
    workflow.complete_roi(who, roi, ["contact"], "client")
    workflow.mark_roi_on_paper(who, roi)
    return roi


def upload(browser, roi, data, filename="scan.pdf"):
    url = f"/consent/{roi.id}"
    return browser.post(f"{url}/upload", {"scan": (io.BytesIO(data), filename)}, token_from=url,
                        content_type="multipart/form-data")


def test_r_roi_7_upload_signs_then_review_replace_delete(app, browser, network):
    """R-ROI-7, R-SAFE-4: awaiting until the scan is attached; stored under a generated
    name; reviewed only as an attachment; replaced and deleted, each audited."""
    roi = paper_roi(network)
    browser.login(network.pr_a1)
    page = browser.get(f"/consent/{roi.id}").get_data(as_text=True)
    assert "Print Blank ROI" in page and "upload the signed scan" in page
    assert models.Roi.get_by_id(roi.id).state == models.ROI_AWAITING
    upload(browser, roi, scanned_pdf(), "../../evil name.pdf")
    roi = models.Roi.get_by_id(roi.id)
    assert roi.state == models.ROI_SIGNED and roi.signature_method == "upload"
    assert roi.attachment_path.startswith("roi-") and roi.attachment_name == "evil name.pdf"
    stored = os.path.join(app.config["UPLOAD_DIR"], roi.attachment_path)
    assert open(stored, "rb").read() == scanned_pdf()
    review = browser.get(f"/consent/{roi.id}/attachment")
    assert review.status_code == 200 and review.data == scanned_pdf()
    assert review.headers["Content-Disposition"].startswith("attachment")
    assert review.headers["X-Content-Type-Options"] == "nosniff"
    upload(browser, roi, written(pypdf_writer()), "second.pdf")
    replaced = models.Roi.get_by_id(roi.id)
    assert replaced.attachment_name == "second.pdf" and not os.path.exists(stored)
    assert replaced.state == models.ROI_SIGNED
    browser.post(f"/consent/{roi.id}/attachment/delete", {}, token_from=f"/consent/{roi.id}")
    deleted = models.Roi.get_by_id(roi.id)
    assert deleted.attachment_path == "" and deleted.state == models.ROI_AWAITING
    actions = [e.action for e in models.AuditEvent.select().order_by(models.AuditEvent.id)]
    assert {"attach_roi_scan", "replace_roi_scan", "delete_roi_scan", "view_roi_scan"} <= set(actions)
    assert os.listdir(app.config["UPLOAD_DIR"]) == []


@pytest.mark.parametrize("name", ["html_after_eof", "javascript_in_object_stream", "eleven_mb", "png_renamed"])
def test_r_safe_4_refused_upload_changes_nothing(app, browser, network, name):
    """R-SAFE-4: a refused upload leaves the ROI awaiting and stores nothing."""
    roi = paper_roi(network)
    browser.login(network.pr_a1)
    response = upload(browser, roi, CORPUS[name][0]())
    assert response.status_code == 302
    assert models.Roi.get_by_id(roi.id).state == models.ROI_AWAITING
    assert os.listdir(app.config["UPLOAD_DIR"]) == []
    page = browser.get(f"/consent/{roi.id}").get_data(as_text=True)
    assert CORPUS[name][1].split()[0] in page.replace("&#34;", '"')


def test_r_safe_4_attachment_only_for_those_who_see_the_roi(app, browser, network, make_browser):
    """R-SAFE-4: another program's user gets 404 for the scan; a program on the signed
    ROI may review it."""
    roi = paper_roi(network)
    browser.login(network.pr_a1)
    upload(browser, roi, scanned_pdf())
    on_roi = make_browser()
    on_roi.login(network.pr_b1)
    assert on_roi.get(f"/consent/{roi.id}/attachment").status_code == 200
    outsider = make_user("provider", network.a2)
    b = make_browser()
    b.login(outsider)
    assert b.get(f"/consent/{roi.id}/attachment").status_code == 404
    assert b.post(f"/consent/{roi.id}/attachment/delete", {}, token_from="/subjects/").status_code == 404


def test_r_roi_7_upload_before_on_paper_refused(app, network):
    """R-ROI-7: a scan is attached only to an ROI whose signature is marked on paper."""
    subject = make_subject(network.a1)
    who = actor(network.pr_a1, network.a1)
    roi = workflow.start_roi(who, subject, [network.b1.id])
    workflow.complete_roi(who, roi, ["contact"], "client")
    with pytest.raises(workflow.RuleViolation):
        workflow.attach_roi_scan(who, roi, scanned_pdf(), "a.pdf", app.config["UPLOAD_DIR"], LIMIT)


def test_r_roi_7_blank_roi_upload_round_trip(app, browser, network):
    """R-ROI-7: the printed Blank ROI (wkhtmltopdf) itself passes the upload checks."""
    roi = paper_roi(network)
    browser.login(network.pr_a1)
    data = browser.get(f"/consent/{roi.id}/blank.pdf").data
    assert uploads.check_pdf(data, LIMIT) >= 1
