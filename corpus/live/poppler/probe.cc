// probe: a long-running driver for live checks of poppler fixes.
// Reads one request per line from stdin, prints one result line per request (flushed):
//   PATH           open PATH, then: every page (Page ctor, annots), the outline opened
//                  recursively (OutlineItem::open), the structure tree (StructTreeRoot),
//                  every FunctionType 4 function evaluated at its domain's lower corner
//                  (PSStack::roll), and the PDF/A conformance (pdfConformanceFromString)
//   render PATH    the same, and page 1 rendered by SplashOutputDev at 18 dpi
//                  (tilingPatternFill)
//   save PATH      the same, and page 1 written with savePageAs to /dev/null
//                  (PDFDoc::markAnnotations)
//   sig PATH       the same, and every signature field's signature validated (without
//                  the certificate): sig=[status,...] (SignatureHandler::validateSignature)
// A crash kills the process (the corpus runner reports "CRASH signal N"); it prints "ready"
// first.
// poppler's error() messages during a request are counted and the distinct ones printed,
// so a fix that reports a malformed file instead of crashing shows on the line.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "GlobalParams.h"
#include "PDFDoc.h"
#include "Page.h"
#include "Annot.h"
#include "Outline.h"
#include "StructTreeRoot.h"
#include "Function.h"
#include "XRef.h"
#include "Error.h"
#include "SplashOutputDev.h"
#include "splash/SplashBitmap.h"
#include "Form.h"
#include "SignatureInfo.h"


static std::vector<std::string> errs;
static int nerrs;

static void onError(ErrorCategory, Goffset, const char *msg)
{
    nerrs++;
    std::string m(msg);
    if (m.size() > 90)
        m = m.substr(0, 90) + "...";
    for (auto &e : errs)
        if (e == m)
            return;
    if (errs.size() < 4)
        errs.push_back(m);
}

static int walkOutline(const std::vector<OutlineItem *> *items, int depth)
{
    if (!items || depth > 32)
        return 0;
    int n = 0;
    for (OutlineItem *it : *items) {
        n++;
        it->open();
        n += walkOutline(it->getKids(), depth + 1);
    }
    return n;
}

static std::string conformance(PDFSubtypeConformance c)
{
    switch (c) {
    case subtypeConfA: return "A";
    case subtypeConfB: return "B";
    case subtypeConfG: return "G";
    case subtypeConfN: return "N";
    case subtypeConfP: return "P";
    case subtypeConfPG: return "PG";
    case subtypeConfU: return "U";
    case subtypeConfNone: return "none";
    default: return "null";
    }
}

static void probe(const std::string &mode, const std::string &path)
{
    errs.clear();
    nerrs = 0;
    std::string out;
    char buf[256];
    auto doc = std::make_unique<PDFDoc>(std::make_unique<GooString>(path));
    if (!doc->isOk()) {
        snprintf(buf, sizeof buf, "not ok (error %d)", doc->getErrorCode());
        out += buf;
    } else {
        int n = doc->getNumPages();
        out += "pages=" + std::to_string(n) + " annots=[";
        for (int i = 1; i <= n && i <= 16; i++) {
            Page *p = doc->getPage(i);
            out += (i > 1 ? "," : "");
            if (!p)
                out += "nopage";
            else
                out += std::to_string(p->getAnnots()->getAnnots().size());
        }
        out += "]";
        Outline *o = doc->getOutline();
        out += " outline=" + std::to_string(o ? walkOutline(o->getItems(), 0) : -1);
        const StructTreeRoot *st = doc->getStructTreeRoot();
        out += " struct=" + (st ? std::to_string(st->getNumChildren()) : std::string("none"));
        // FunctionType 4 objects, evaluated at the lower corner of their domain.
        XRef *xref = doc->getXRef();
        std::string fns;
        for (int num = 1; num < xref->getNumObjects(); num++) {
            XRefEntry *e = xref->getEntry(num, false);
            if (!e || (e->type != xrefEntryUncompressed && e->type != xrefEntryCompressed))
                continue; // fetching a free entry would make poppler reconstruct the xref
            Object obj = xref->fetch(num, e->type == xrefEntryUncompressed ? e->gen : 0);
            Dict *d = obj.isStream() ? obj.streamGetDict() : nullptr;
            if (!d)
                continue;
            Object ft = d->lookup("FunctionType");
            if (!ft.isInt() || ft.getInt() != 4)
                continue;
            std::unique_ptr<Function> f(Function::parse(&obj));
            if (!f) {
                fns += "x";
                continue;
            }
            double in[funcMaxInputs] = {}, res[funcMaxOutputs] = {};
            for (int k = 0; k < f->getInputSize(); k++)
                in[k] = f->getDomainMin(k);
            f->transform(in, res);
            snprintf(buf, sizeof buf, "%s%g", fns.empty() ? "" : ",", res[0]);
            fns += buf;
        }
        out += " fn=[" + fns + "]";
        out += " conf=" + conformance(doc->getPDFSubtypeConformance());
        if (mode == "render" && n >= 1) {
            SplashColor paper = { 255, 255, 255 };
            SplashOutputDev dev(splashModeRGB8, 4, false, paper);
            dev.startDoc(doc.get());
            doc->displayPage(&dev, 1, 18, 18, 0, true, false, false);
            SplashBitmap *bm = dev.getBitmap();
            out += " render=" + std::to_string(bm->getWidth()) + "x" + std::to_string(bm->getHeight());
        }
        if (mode == "sig") {
            static const char *names[] = { "VALID", "INVALID", "DIGEST_MISMATCH", "DECODING_ERROR", "GENERIC_ERROR", "NOT_FOUND", "NOT_VERIFIED" };
            std::string sigs;
            for (FormFieldSignature *f : doc->getSignatureFields()) {
                SignatureInfo *si = f->validateSignature(false, true, -1, false, false);
                int st = si ? si->getSignatureValStatus() : -1;
                sigs += (sigs.empty() ? "" : ",");
                sigs += st >= 0 && st <= 6 ? names[st] : "none";
            }
            out += " sig=[" + sigs + "]";
        }
        if (mode == "save" && n >= 1) {
            int r = doc->savePageAs(GooString("/dev/null"), 1);
            out += " save=" + std::to_string(r);
        }
    }
    out += " errors=" + std::to_string(nerrs);
    for (auto &e : errs)
        out += " | " + e;
    printf("%s\n", out.c_str());
    fflush(stdout);
}

int main()
{
    globalParams = std::make_unique<GlobalParams>();
    globalParams->setErrQuiet(false);
    setErrorCallback(onError);
    printf("ready\n");
    fflush(stdout);
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty())
            continue;
        std::string mode, path = line;
        auto sp = line.find(' ');
        if (sp != std::string::npos && (line.compare(0, sp, "render") == 0 || line.compare(0, sp, "save") == 0 || line.compare(0, sp, "sig") == 0)) {
            mode = line.substr(0, sp);
            path = line.substr(sp + 1);
        }
        probe(mode, path);
    }
    return 0;
}
