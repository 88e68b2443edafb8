/*
 * libxml2 live-check driver: reads one command per line on stdin and answers one line on
 * stdout. Each command runs in a forked child of this (patched) process; the child's
 * output (and libxml2's error messages) is gathered through a pipe and printed as one line,
 * its lines joined by " | " (a line longer than 200 bytes as "[N chars] head ... tail").
 * A child killed by a signal answers "CRASH signal N".
 *
 * Commands (paths relative to the working directory):
 *   parse FILE [OPTS]      xmlReadFile; OPTS = comma list of HUGE,DTDVALID
 *   xsd SCHEMA.xsd DOC     W3C XML Schema: compile, then validate DOC
 *   sct SCHEMA.sct DOC     Schematron (text report): compile, then validate DOC
 *   pattern DOC EXPR       xmlPatterncompile, then the elements it matches
 *   catalog CAT            xmlLoadACatalog (a private catalog)
 *   gcatalog CAT URI       xmlLoadCatalog + xmlCatalogResolveURI
 *   shell DOC SCRIPT       xmlShell on DOC with the lines of SCRIPT as commands: its
 *                          "Unknown command" lines
 *   dict                   xmlDictLookup of two different zero-length strings
 *   qname P N LEN          xmlBuildQName(N, P, buf[64], LEN)
 *   sax1 DOC               push parser, a custom SAX1 startElement, XML_PARSE_SAX1
 *   nsreset                a truncated document with a namespace, xmlCtxtReset, again
 *   atype                  an ID attribute with a libxslt-style high bit in atype,
 *                          removed: is the ID still registered?
 *   xpathrec DOC EXPR      XPath with an extension function ev(s) that evaluates s on
 *                          the same context (like EXSLT dyn:evaluate); ev stops itself
 *                          at nesting 3000
 *   leak N CMD...          CMD once (warm-up), then N times with its output discarded:
 *                          the heap growth per run (mallinfo2)
 */
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <libxml/catalog.h>
#include <libxml/debugXML.h>
#include <libxml/dict.h>
#include <libxml/parser.h>
#include <libxml/pattern.h>
#include <libxml/schematron.h>
#include <libxml/tree.h>
#include <libxml/valid.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlschemas.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

/* Errors: one line each, a repeated one counted. */
static char last_err[512];
static int last_rep;
static void flush_rep(void)
{
    if (last_rep)
        printf("(previous error repeated %d more times)\n", last_rep);
    last_rep = 0;
    last_err[0] = 0;
}

static void serr(void *u, xmlErrorPtr e)
{
    (void)u;
    if (e == NULL)
        return;
    const char *m = e->message ? e->message : "";
    char key[512];
    snprintf(key, sizeof key, "%d/%d/%s", e->domain, e->code, m);
    if (!strcmp(key, last_err)) {
        last_rep++;
        return;
    }
    flush_rep();
    snprintf(last_err, sizeof last_err, "%s", key);
    printf("error: %s", m);
    if (*m == 0 || m[strlen(m) - 1] != '\n')
        printf("\n");
}

static int parse_opts(const char *s)
{
    int o = 0;
    if (s && strstr(s, "HUGE"))
        o |= XML_PARSE_HUGE;
    if (s && strstr(s, "DTDVALID"))
        o |= XML_PARSE_DTDVALID;
    return o;
}

static void cmd_parse(char *file, char *opts)
{
    xmlDocPtr doc = xmlReadFile(file, NULL, parse_opts(opts));
    flush_rep();
    if (doc == NULL) {
        printf("no document\n");
        return;
    }
    xmlNodePtr r = xmlDocGetRootElement(doc);
    printf("document, root of %d chars\n", r ? xmlStrlen(r->name) : 0);
    xmlFreeDoc(doc);
}

static void cmd_xsd(char *xsd, char *file)
{
    xmlSchemaParserCtxtPtr pc = xmlSchemaNewParserCtxt(xsd);
    xmlSchemaSetParserStructuredErrors(pc, serr, NULL);
    xmlSchemaPtr s = xmlSchemaParse(pc);
    xmlSchemaFreeParserCtxt(pc);
    flush_rep();
    if (s == NULL) {
        printf("schema failed to compile\n");
        return;
    }
    xmlSchemaValidCtxtPtr vc = xmlSchemaNewValidCtxt(s);
    xmlSchemaSetValidStructuredErrors(vc, serr, NULL);
    int r = xmlSchemaValidateFile(vc, file, 0);
    flush_rep();
    printf("validate=%d\n", r);
    xmlSchemaFreeValidCtxt(vc);
    xmlSchemaFree(s);
}

static void cmd_sct(char *sct, char *file)
{
    xmlSchematronParserCtxtPtr pc = xmlSchematronNewParserCtxt(sct);
    xmlSchematronPtr s = xmlSchematronParse(pc);
    xmlSchematronFreeParserCtxt(pc);
    flush_rep();
    if (s == NULL) {
        printf("schema failed to compile\n");
        return;
    }
    xmlDocPtr doc = xmlReadFile(file, NULL, 0);
    if (doc) {
        xmlSchematronValidCtxtPtr vc = xmlSchematronNewValidCtxt(s, XML_SCHEMATRON_OUT_TEXT);
        int r = xmlSchematronValidateDoc(vc, doc);
        fflush(stderr);
        flush_rep();
        printf("validate=%d\n", r);
        xmlSchematronFreeValidCtxt(vc);
        xmlFreeDoc(doc);
    }
    xmlSchematronFree(s);
}

static void matches(xmlPatternPtr p, xmlNodePtr n, int *total)
{
    for (; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        (*total)++;
        if (xmlPatternMatch(p, n) == 1)
            printf("match %s\n", n->name);
        matches(p, n->children, total);
    }
}

static void cmd_pattern(char *file, char *expr)
{
    xmlDocPtr doc = xmlReadFile(file, NULL, 0);
    if (!doc) {
        printf("no document\n");
        return;
    }
    xmlPatternPtr p = xmlPatterncompile(BAD_CAST expr, doc->dict, XML_PATTERN_XPATH, NULL);
    flush_rep();
    if (!p) {
        printf("pattern failed to compile\n");
    } else {
        int total = 0;
        matches(p, doc->children, &total);
        printf("of %d elements\n", total);
        xmlFreePattern(p);
    }
    xmlFreeDoc(doc);
}

static void cmd_catalog(char *cat)
{
    xmlCatalogPtr c = xmlLoadACatalog(cat);
    flush_rep();
    printf("%s\n", c ? "catalog loaded" : "catalog failed to load");
    if (c)
        xmlFreeCatalog(c);
}

static void cmd_gcatalog(char *cat, char *uri)
{
    int l = xmlLoadCatalog(cat);
    xmlChar *res = xmlCatalogResolveURI(BAD_CAST uri);
    flush_rep();
    printf("load=%d %s -> %s\n", l, uri, res ? (char *)res : "(null)");
    xmlFree(res);
    xmlCatalogCleanup();
}

static int ev_level, ev_max;
static void ev_fn(xmlXPathParserContextPtr ctxt, int nargs)
{
    if (nargs != 1) {
        xmlXPathErr(ctxt, XPATH_INVALID_ARITY);
        return;
    }
    xmlChar *s = xmlXPathPopString(ctxt);
    if (++ev_level > ev_max)
        ev_max = ev_level;
    xmlXPathObjectPtr r;
    if (ev_level >= 3000)
        r = xmlXPathNewCString("stopped");
    else
        r = xmlXPathEval(s, ctxt->context);
    ev_level--;
    xmlFree(s);
    if (r == NULL) {
        xmlXPathErr(ctxt, XPATH_EXPR_ERROR);
        return;
    }
    valuePush(ctxt, r);
}

static void cmd_xpathrec(char *file, char *expr)
{
    xmlDocPtr doc = xmlReadFile(file, NULL, 0);
    if (!doc) {
        printf("no document\n");
        return;
    }
    xmlXPathContextPtr c = xmlXPathNewContext(doc);
    xmlXPathRegisterFunc(c, BAD_CAST "ev", ev_fn);
    ev_level = ev_max = 0;
    xmlXPathObjectPtr o = xmlXPathEvalExpression(BAD_CAST expr, c);
    flush_rep();
    printf("%s, deepest ev() nesting %d\n", o ? "value" : "error", ev_max);
    xmlXPathFreeObject(o);
    xmlXPathFreeContext(c);
    xmlFreeDoc(doc);
}

static FILE *shell_script;
static char *shell_read(char *prompt)
{
    char buf[4096];
    (void)prompt;
    if (!shell_script || !fgets(buf, sizeof buf, shell_script))
        return NULL;
    return strdup(buf);
}

static void cmd_shell(char *file, char *script)
{
    xmlDocPtr doc = xmlReadFile(file, NULL, 0);
    if (!doc) {
        printf("no document\n");
        return;
    }
    char *out = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&out, &len);
    shell_script = fopen(script, "r");
    xmlShell(doc, file, shell_read, o); /* frees doc */
    if (shell_script)
        fclose(shell_script);
    fclose(o);
    flush_rep();
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n"))
        if (strstr(l, "Unknown command"))
            printf("%s\n", l);
    printf("shell returned\n");
    free(out);
}

static void cmd_dict(void)
{
    xmlDictPtr d = xmlDictCreate();
    const xmlChar *a = xmlDictLookup(d, BAD_CAST "abc", 0);
    const xmlChar *b = xmlDictLookup(d, BAD_CAST "xyz", 0);
    printf("empty strings: %s, dict size %d\n", a == b ? "SAME entry" : "DIFFERENT entries",
           xmlDictSize(d));
    xmlDictFree(d);
}

static void cmd_qname(char *p, char *n, char *len)
{
    xmlChar buf[64];
    if (!p || !n || !len) {
        printf("usage: qname P N LEN\n");
        return;
    }
    xmlChar *q = xmlBuildQName(BAD_CAST n, BAD_CAST p, buf, atoi(len));
    printf("qname=%s\n", q ? (char *)q : "(null)");
    if (q && q != buf && q != (xmlChar *)n)
        xmlFree(q);
}

static int sax1_starts;
static void my_start(void *ctx, const xmlChar *name, const xmlChar **atts)
{
    (void)ctx;
    (void)name;
    (void)atts;
    sax1_starts++;
}

static void cmd_sax1(char *file)
{
    xmlSAXHandler sax;
    memset(&sax, 0, sizeof sax);
    sax.startElement = my_start;
    sax.initialized = 1;
    sax1_starts = 0;
    xmlParserCtxtPtr c = xmlCreatePushParserCtxt(&sax, NULL, NULL, 0, file);
    xmlCtxtUseOptions(c, XML_PARSE_SAX1);
    FILE *f = fopen(file, "r");
    char buf[4096];
    size_t n;
    while (f && (n = fread(buf, 1, sizeof buf, f)) > 0)
        xmlParseChunk(c, buf, n, 0);
    xmlParseChunk(c, NULL, 0, 1);
    if (f)
        fclose(f);
    flush_rep();
    printf("custom startElement ran %d times\n", sax1_starts);
    if (c->myDoc)
        xmlFreeDoc(c->myDoc);
    xmlFreeParserCtxt(c);
}

static void cmd_nsreset(void)
{
    static const char d1[] = "<a:x xmlns:a='urn:one'><a:y>";
    static const char d2[] = "<a:z/>";
    xmlParserCtxtPtr c = xmlCreatePushParserCtxt(NULL, NULL, NULL, 0, "d1");
    xmlParseChunk(c, d1, sizeof d1 - 1, 0);
    if (c->myDoc) {
        xmlFreeDoc(c->myDoc);
        c->myDoc = NULL;
    }
    xmlCtxtReset(c);
    printf("nsNr after xmlCtxtReset=%d\n", c->nsNr);
    xmlCtxtResetPush(c, d2, sizeof d2 - 1, "d2", NULL);
    xmlParseChunk(c, NULL, 0, 1);
    flush_rep();
    if (c->myDoc)
        xmlFreeDoc(c->myDoc);
    xmlFreeParserCtxt(c);
}

static void cmd_atype(void)
{
    static const char d[] = "<!DOCTYPE r [<!ATTLIST e id ID #IMPLIED>]><r><e id='k1'/></r>";
    xmlDocPtr doc = xmlReadMemory(d, sizeof d - 1, "atype.xml", NULL, XML_PARSE_DTDATTR);
    xmlAttrPtr a = xmlDocGetRootElement(doc)->children->properties;
    a->atype |= (1U << 27); /* a high bit, as libxslt sets it */
    xmlRemoveProp(a);       /* xmlFreeProp must drop the ID */
    printf("after removing the attribute, xmlGetID(k1)=%s\n",
           xmlGetID(doc, BAD_CAST "k1") ? "STILL FOUND" : "none");
    xmlFreeDoc(doc);
}

static void run(char *line);

static void cmd_leak(char *line)
{
    char *sp;
    long n = strtol(line, &sp, 10);
    while (*sp == ' ')
        sp++;
    char tmp[4096];
    int nul = open("/dev/null", O_WRONLY), saved = dup(1);
    fflush(stdout);
    dup2(nul, 1);
    snprintf(tmp, sizeof tmp, "%s", sp);
    run(tmp);
    fflush(stdout);
    size_t heap0 = mallinfo2().uordblks;
    for (long i = 0; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s", sp);
        run(tmp);
    }
    fflush(stdout);
    long grown = (long)mallinfo2().uordblks - (long)heap0;
    dup2(saved, 1);
    close(saved);
    close(nul);
    printf("heap grew %ld bytes per run over %ld runs\n", n > 0 ? grown / n : 0, n);
}

static void run(char *line)
{
    char *save, *cmd = strtok_r(line, " ", &save);
    char *a1 = strtok_r(NULL, " ", &save);
    char *rest = save && *save ? save : NULL; /* the remainder: may hold spaces */
    if (cmd == NULL)
        printf("empty command\n");
    else if (!strcmp(cmd, "ping"))
        printf("ready\n");
    else if (!strcmp(cmd, "parse"))
        cmd_parse(a1, rest);
    else if (!strcmp(cmd, "xsd"))
        cmd_xsd(a1, rest);
    else if (!strcmp(cmd, "sct"))
        cmd_sct(a1, rest);
    else if (!strcmp(cmd, "pattern"))
        cmd_pattern(a1, rest);
    else if (!strcmp(cmd, "catalog"))
        cmd_catalog(a1);
    else if (!strcmp(cmd, "gcatalog"))
        cmd_gcatalog(a1, rest);
    else if (!strcmp(cmd, "shell"))
        cmd_shell(a1, rest);
    else if (!strcmp(cmd, "dict"))
        cmd_dict();
    else if (!strcmp(cmd, "qname")) {
        char *n = strtok_r(NULL, " ", &save), *l = strtok_r(NULL, " ", &save);
        cmd_qname(a1, n, l);
    } else if (!strcmp(cmd, "sax1"))
        cmd_sax1(a1);
    else if (!strcmp(cmd, "nsreset"))
        cmd_nsreset();
    else if (!strcmp(cmd, "atype"))
        cmd_atype();
    else if (!strcmp(cmd, "xpathrec"))
        cmd_xpathrec(a1, rest);
    else if (!strcmp(cmd, "leak") && a1) {
        char buf[4096];
        snprintf(buf, sizeof buf, "%s%s%s", a1, rest ? " " : "", rest ? rest : "");
        cmd_leak(buf);
    } else
        printf("unknown command %s\n", cmd);
    flush_rep();
}

/* The child's output as one line. */
static char *answer(FILE *in)
{
    static char out[4096];
    size_t k = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    out[0] = 0;
    while ((n = getline(&line, &cap, in)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0 || k >= sizeof out - 600)
            continue;
        if (k)
            k += snprintf(out + k, sizeof out - k, " | ");
        if (n > 200)
            k += snprintf(out + k, sizeof out - k, "[%zd chars] %.80s ... %s", n, line,
                          line + n - 80);
        else
            k += snprintf(out + k, sizeof out - k, "%s", line);
    }
    free(line);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    return out;
}

int main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    xmlInitParser();
    xmlSetStructuredErrorFunc(NULL, serr);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        int fd[2];
        if (pipe(fd) != 0)
            return 1;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(fd[0]);
            dup2(fd[1], 1);
            dup2(fd[1], 2);
            close(fd[1]);
            setvbuf(stdout, NULL, _IONBF, 0);
            setvbuf(stderr, NULL, _IONBF, 0);
            run(line);
            fflush(stdout);
            fflush(stderr);
            _exit(0);
        }
        close(fd[1]);
        FILE *in = fdopen(fd[0], "r");
        char *out = answer(in);
        fclose(in);
        int st;
        waitpid(pid, &st, 0);
        if (WIFSIGNALED(st))
            printf("CRASH signal %d\n", WTERMSIG(st));
        else
            printf("%s\n", out);
    }
    return 0;
}
