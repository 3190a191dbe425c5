"""HTML to PDF through pdfkit and Debian's wkhtmltopdf (no header/footer support there:
page information goes in the body)."""

import os
import shutil

import pdfkit

PDF_OPTIONS = {
    "page-size": "Letter",
    "margin-top": "12mm",
    "margin-bottom": "12mm",
    "margin-left": "12mm",
    "margin-right": "12mm",
    "encoding": "UTF-8",
    "print-media-type": None,
    "disable-javascript": None,
    "disable-local-file-access": None,
    "quiet": None,
}


class PdfUnavailable(RuntimeError):
    pass


def render_pdf(html, **options):
    """PDF bytes for a self-contained HTML page (inline CSS, no external resources)."""
    binary = shutil.which("wkhtmltopdf")
    if not binary:
        raise PdfUnavailable("wkhtmltopdf is not installed: run `make run` as root, or "
                             "`sudo apt-get install wkhtmltopdf`.")
    runtime = os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/connect-xdg")
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    config = pdfkit.configuration(wkhtmltopdf=binary)
    return pdfkit.from_string(html, False, options={**PDF_OPTIONS, **options}, configuration=config)
