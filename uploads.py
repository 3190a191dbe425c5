"""Uploaded signed ROI scans (R-ROI-7, R-SAFE-4): checked by parsing, never by name.

A file is accepted only when it starts like a PDF, ends with %%EOF (nothing after it),
fits the size limit, is not encrypted, parses with pypdf, and carries no active content
(JavaScript, automatic or launch actions, embedded files), looked for twice: in the raw
bytes (names, #-escapes decoded) and in every parsed object, including those inside
compressed object streams that no byte search can see.
"""

import io
import os
import re
import secrets

from pypdf import PdfReader
from pypdf.errors import PdfReadError, PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

from workflow import RuleViolation

FORBIDDEN_NAMES = frozenset({
    "/JavaScript", "/JS", "/OpenAction", "/AA", "/Launch", "/EmbeddedFiles",
    "/EmbeddedFile", "/RichMedia", "/XFA", "/SubmitForm", "/ImportData", "/GoToE",
})
NAME_RE = re.compile(rb"/[^\s/<>\[\]()%{}]+")
HEX_ESCAPE_RE = re.compile(rb"#([0-9A-Fa-f]{2})")
MAX_OBJECTS = 200_000


class UploadRefused(RuleViolation):
    """The file is not an acceptable PDF; the message says why."""

    status_code = 422


def _decode_name(raw):
    return HEX_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("latin-1")


def _byte_scan(data):
    for match in NAME_RE.finditer(data):
        name = _decode_name(match.group(0))
        if name in FORBIDDEN_NAMES:
            return name
    return None


def _walk(obj, seen, depth=0):
    """The first forbidden name found in a parsed object tree, or None."""
    if depth > 60:
        return None
    if isinstance(obj, IndirectObject):
        key = (obj.idnum, obj.generation)
        if key in seen:
            return None
        seen.add(key)
        obj = obj.get_object()
    if isinstance(obj, DictionaryObject):  # stream objects are dictionaries too
        for key, value in obj.items():
            if key in FORBIDDEN_NAMES:
                return key
            if isinstance(value, NameObject) and value in FORBIDDEN_NAMES:
                return str(value)
            found = _walk(value, seen, depth + 1)
            if found:
                return found
    elif isinstance(obj, ArrayObject):
        for value in obj:
            if isinstance(value, NameObject) and value in FORBIDDEN_NAMES:
                return str(value)
            found = _walk(value, seen, depth + 1)
            if found:
                return found
    return None


def _object_scan(reader):
    """Every object of the file: the cross-reference tables and the object streams."""
    seen = set()
    found = _walk(reader.trailer, seen)
    if found:
        return found
    numbers = set()
    for generation, table in reader.xref.items():
        numbers.update((num, generation) for num in table)
    numbers.update((num, 0) for num in reader.xref_objStm)
    if len(numbers) > MAX_OBJECTS:
        raise UploadRefused("This PDF has too many parts to be checked. Scan it again.")
    for num, generation in sorted(numbers):
        try:
            found = _walk(IndirectObject(num, generation, reader), seen)
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError):
            raise UploadRefused("This PDF is damaged and cannot be read. Scan it again.") from None
        if found:
            return found
    return None


def check_pdf(data, limit):
    """Refuse with a clear sentence anything but a clean, readable PDF within `limit` bytes."""
    if not data:
        raise UploadRefused("Choose a PDF file to upload.")
    if len(data) > limit:
        raise UploadRefused(f"The file is larger than {limit // (1024 * 1024)} MB. "
                            "Scan it again at a lower resolution.")
    if not data.startswith(b"%PDF-"):
        raise UploadRefused("Only PDF files can be uploaded. This file is not a PDF.")
    tail = data[-2048:]
    end = tail.rfind(b"%%EOF")
    if end < 0:
        raise UploadRefused("This PDF is incomplete (it may have been cut off). Upload it again.")
    if tail[end + 5:].strip():
        raise UploadRefused("This PDF has extra content after its end and cannot be accepted.")
    if _byte_scan(data):
        raise UploadRefused("This PDF contains scripts, automatic actions or embedded files "
                            "and cannot be accepted. Upload a plain scan.")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise UploadRefused("This PDF is password-protected. Upload a scan without a password.")
        if len(reader.pages) < 1:
            raise UploadRefused("This PDF has no pages.")
        found = _object_scan(reader)
    except UploadRefused:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, RecursionError):
        raise UploadRefused("This PDF is damaged and cannot be read. Scan it again.") from None
    if found:
        raise UploadRefused("This PDF contains scripts, automatic actions or embedded files "
                            "and cannot be accepted. Upload a plain scan.")
    return len(reader.pages)


def store(data, upload_dir):
    """Write the file under a generated name outside the served folders; returns the name."""
    os.makedirs(upload_dir, exist_ok=True)
    name = f"roi-{secrets.token_hex(16)}.pdf"
    path = os.path.join(upload_dir, name)
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return name


def path_of(name, upload_dir):
    """The stored file's path; only generated names are accepted (no traversal)."""
    if not re.fullmatch(r"roi-[0-9a-f]{32}\.pdf", name or ""):
        return None
    return os.path.join(upload_dir, name)


def remove(name, upload_dir):
    path = path_of(name, upload_dir)
    if path and os.path.exists(path):
        os.remove(path)


def safe_filename(original):
    """The user's file name, for display only (never used as a path)."""
    base = os.path.basename((original or "").replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip() or "scan.pdf"
    return base[:200]
