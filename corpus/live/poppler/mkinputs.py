#!/usr/bin/env python3
"""Craft the PDFs of the poppler live checks (one per fix) into DIR (default ./inputs).

Each PDF is written by hand: objects, a classic xref table with correct offsets (unless a
check needs a broken one), trailer. See cpp.md for what each one shows.
"""
import hashlib
import os
import subprocess
import sys
import tempfile

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "inputs")
os.makedirs(out, exist_ok=True)


def stream(d, data):
    if isinstance(data, str):
        data = data.encode()
    return b"<< " + d.encode() + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def pdf(name, objs, info=None, extra=b"", bogus=(), size=None):
    """objs: {num: bytes|str}. extra: raw bytes appended after the objects, before the xref
    (not listed in it). bogus: object numbers whose xref entry points at garbage."""
    body = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offs = {}
    for num in sorted(objs):
        o = objs[num]
        if isinstance(o, str):
            o = o.encode()
        offs[num] = len(body)
        body += b"%d 0 obj\n" % num + o + b"\nendobj\n"
    body += extra
    n = size or (max(objs) + 1)
    xref = len(body)
    body += b"xref\n0 %d\n" % n
    body += b"0000000000 65535 f \n"
    for i in range(1, n):
        if i in bogus:
            body += b"%010d 00000 n \n" % 3  # inside the header comment: not "i 0 obj"
        elif i in offs:
            body += b"%010d 00000 n \n" % offs[i]
        else:
            body += b"0000000000 65535 f \n"
    tr = "/Size %d /Root 1 0 R" % n
    if info:
        tr += " /Info %d 0 R" % info
    body += b"trailer\n<< " + tr.encode() + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    with open(os.path.join(out, name), "wb") as f:
        f.write(body)


PAGE = "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] %s >>"
PAGES1 = "<< /Type /Pages /Kids [3 0 R] /Count 1 >>"

# Baseline: one page, one annotation, a two-item outline, a Type 4 function, PDF/A-1b.
pdf("ok.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R /Outlines 5 0 R >>",
    2: PAGES1,
    3: PAGE % "/Annots [20 0 R]",
    5: "<< /Type /Outlines /First 6 0 R /Last 7 0 R /Count 2 >>",
    6: "<< /Title (One) /Parent 5 0 R /Next 7 0 R >>",
    7: "<< /Title (Two) /Parent 5 0 R /Prev 6 0 R >>",
    9: "<< /GTS_PDFA1Version (PDF/A-1b) >>",
    20: "<< /Type /Annot /Subtype /Text /Rect [10 10 30 30] /Contents (hi) >>",
    30: stream("/FunctionType 4 /Domain [0 1] /Range [0 10]", "{ 3 4 add }"),
}, info=9)

# CVE-2023-34872, OutlineItem::open: item 6 is a dict in the xref table; its /Next (7) has a
# broken xref entry, so reading the list makes poppler reconstruct the xref, and the scan
# takes the LAST "6 0 obj" of the file, an integer. open() then fetches 6 again and calls
# dictLookupNF on an int: abort() in pristine; the fix gives it no kids.
pdf("outline-reconstruct.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R /Outlines 5 0 R >>",
    2: PAGES1,
    3: PAGE % "",
    5: "<< /Type /Outlines /First 6 0 R /Last 6 0 R /Count 1 >>",
    6: "<< /Title (One) /Parent 5 0 R /Next 7 0 R >>",
    7: "<< /Title (Two) /Parent 5 0 R >>",
}, extra=b"6 0 obj\n42\nendobj\n", bogus=(7,))

# CVE-2025-52885, StructTreeRoot::parseNumberTreeNode: key 0 twice in the ParentTree. The
# second entry resizes the vector the first one's pointers (refToParentMap) point into,
# and parentTreeAdd writes through them (use after free). The fix skips the duplicate with
# "Nums item at position 2 is a duplicate entry for key 0".
dup = " ".join(["10 0 R"] * 64)
pdf("struct-dup.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R /StructTreeRoot 4 0 R /MarkInfo << /Marked true >> >>",
    2: PAGES1,
    3: PAGE % "/StructParents 0",
    4: "<< /Type /StructTreeRoot /K 10 0 R /ParentTree << /Nums [0 [10 0 R] 0 [%s]] >> >>" % dup,
    10: "<< /Type /StructElem /S /Document /P 4 0 R >>",
})

# CVE-2025-52886, Page::Page / Annots::Annots: a page whose /Annots has 10001 entries.
# Pristine loads them all; the fix refuses the page ("Page annotations object (page 1) is
# likely malformed. Too big: (10001)").
pdf("annots-many.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R >>",
    2: PAGES1,
    3: PAGE % ("/Annots [%s]" % " ".join(["20 0 R"] * 10001)),
    20: "<< /Type /Annot /Subtype /Text /Rect [10 10 30 30] /Contents (hi) >>",
})

# CVE-2025-32364, PSStack::roll: "-1 -2147483648 roll" computes -INT_MIN % -1: SIGFPE in
# pristine; the fix returns early (the function then pops an empty stack: result 0).
pdf("psroll.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R >>",
    2: PAGES1,
    3: PAGE % "",
    30: stream("/FunctionType 4 /Domain [0 1] /Range [0 10]", "{ -1 -2147483648 roll }"),
})

# CVE-2025-43718, pdfConformanceFromString: a long conformance string makes std::regex
# recurse once per character: stack overflow (SIGSEGV) while the document loads. With the
# fix ({1,3}) the conformance is "none".
pdf("regex.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R >>",
    2: PAGES1,
    3: PAGE % "",
    9: "<< /GTS_PDFA1Version (PDF/A-1%s) >>" % ("a" * 400000),
}, info=9)

# CVE-2025-50420, PDFDoc::markAnnotations (pdfseparate; here "save PATH"): the page's
# /Annots (5) holds an inline dict with neither /Type nor /Subtype, with an inline dict whose
# /Annots is 5 again: markAnnotations -> markPageObjects -> markObject -> markDictionary ->
# markAnnotations -> fetch 5 (new Dicts each time, so alreadyMarkedDicts never matches) ...
# unbounded recursion: stack overflow in pristine; the fix skips the entry.
pdf("annots-recursive.pdf", {
    1: "<< /Type /Catalog /Pages 2 0 R >>",
    2: PAGES1,
    3: PAGE % "/Annots 5 0 R",
    5: "[ << /X << /Annots 5 0 R >> >> ]",
})


def signed(name, forge):
    """CVE-2025-43903: an adbe.pkcs7.sha1 signature (the CMS SignedData encapsulates the SHA-1
    of the signed byte ranges) made by openssl with a throw-away self-signed key; `forge`
    flips the last byte of the DER, which is the last byte of the signer's RSA signature.
    Pristine poppler only compares the encapsulated digest (VALID either way); the fix also
    verifies the signature (INVALID when forged)."""
    n_hex = 8192
    objs = {
        1: "<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /SigFlags 3 >> >>",
        2: PAGES1,
        3: PAGE % "/Annots [4 0 R]",
        4: "<< /Type /Annot /Subtype /Widget /FT /Sig /T (Sig1) /Rect [0 0 0 0] /F 132 /P 3 0 R /V 5 0 R >>",
        5: "<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /adbe.pkcs7.sha1 "
           "/ByteRange [0 @A@@@@@@@ @B@@@@@@@ @C@@@@@@@] /Contents <" + "0" * n_hex + "> >>",
    }
    pdf(name, objs)
    path = os.path.join(out, name)
    body = bytearray(open(path, "rb").read())
    a = body.index(b"/Contents <") + len(b"/Contents ")
    b = a + n_hex + 2
    for tag, v in ((b"@A@@@@@@@", a), (b"@B@@@@@@@", b), (b"@C@@@@@@@", len(body) - b)):
        i = body.index(tag)
        body[i:i + len(tag)] = b"%09d" % v
    digest = hashlib.sha1(bytes(body[:a]) + bytes(body[b:])).digest()
    with tempfile.TemporaryDirectory() as t:
        run = lambda *c: subprocess.run(c, cwd=t, check=True, capture_output=True)
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=corpus",
            "-days", "3650", "-keyout", "key.pem", "-out", "cert.pem")
        open(os.path.join(t, "digest"), "wb").write(digest)
        run("openssl", "cms", "-sign", "-binary", "-nodetach", "-md", "sha1", "-nosmimecap",
            "-in", "digest", "-signer", "cert.pem", "-inkey", "key.pem", "-outform", "DER",
            "-out", "sig.der")
        der = bytearray(open(os.path.join(t, "sig.der"), "rb").read())
    if forge:
        der[-1] ^= 0xff
    hx = der.hex().encode()
    assert len(hx) <= n_hex
    body[a + 1:a + 1 + len(hx)] = hx
    with open(path, "wb") as f:
        f.write(body)


signed("signed.pdf", forge=False)
signed("signed-forged.pdf", forge=True)

print("written to", out)
