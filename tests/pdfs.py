"""Small PDFs built by hand (no PDF library): the upload corpus of the tests and the
signed scans `make soak` uploads (bench/locustfile.py)."""

import zlib


def build_pdf(bodies):
    """A classic PDF: bodies[i] is object i+1; object 1 is the catalog."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(bodies, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(bodies) + 1, xref)
    return bytes(out)


def stream(dictionary, data):
    return dictionary[:-2] + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def scanned_pdf():
    """A genuine scanned-style page: one grey image drawn full width."""
    width, height = 200, 100
    pixels = bytes((x * 255 // width) for _ in range(height) for x in range(width))
    image = stream(b"<< /Type /XObject /Subtype /Image /Width 200 /Height 100 /ColorSpace "
                   b"/DeviceGray /BitsPerComponent 8 /Filter /FlateDecode >>", zlib.compress(pixels))
    content = b"q 500 0 0 250 50 400 cm /Im1 Do Q"
    return build_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject "
        b"<< /Im1 4 0 R >> >> /Contents 5 0 R >>",
        image,
        stream(b"<< >>", content),
    ])
