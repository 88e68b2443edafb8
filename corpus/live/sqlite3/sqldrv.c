/* A long-running driver for libsqlite3.so: one connection to ":memory:"; each line of stdin
 * is one request and gets one line of answer.
 *   SQL...            run by sqlite3_exec; the answer is the rows (columns joined by |,
 *                     rows by " ; "), then "Error: ..." if a statement failed, or "ok"
 *   .changeset HEX    iterate the changeset HEX with sqlite3changeset_start/next/op/new:
 *                     each change ("op=N table=T new[i]=V ...", joined by " ; "), then
 *                     "next rc=N (message)"
 * It registers x_count(X), an aggregate without xValue/xInverse (as the test suite's tcl
 * x_count: it may not be used as a window function). It prints "ready" first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sqlite3.h"
#include "sqlite3session.h"

static char out[1 << 16];
static size_t outn;

static void put(const char *s) {
  size_t n = strlen(s);
  if (outn + n >= sizeof out - 1) n = sizeof out - 1 - outn;
  memcpy(out + outn, s, n);
  outn += n;
  out[outn] = 0;
}

static int row_cb(void *u, int n, char **v, char **c) {
  (void)u; (void)c;
  if (outn) put(" ; ");
  for (int i = 0; i < n; i++) {
    if (i) put("|");
    put(v[i] ? v[i] : "NULL");
  }
  return 0;
}

static void xc_step(sqlite3_context *ctx, int n, sqlite3_value **v) {
  (void)n;
  sqlite3_int64 *p = sqlite3_aggregate_context(ctx, sizeof *p);
  if (p && sqlite3_value_type(v[0]) != SQLITE_NULL) (*p)++;
}

static void xc_final(sqlite3_context *ctx) {
  sqlite3_int64 *p = sqlite3_aggregate_context(ctx, 0);
  sqlite3_result_int64(ctx, p ? *p : 0);
}

static void changeset(const char *hex) {
  int n = (int)strlen(hex) / 2;
  unsigned char *buf = malloc(n ? n : 1);
  char b[256];
  for (int i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &buf[i]);
  sqlite3_changeset_iter *it;
  int rc = sqlite3changeset_start(&it, n, buf);
  if (rc != SQLITE_OK) {
    snprintf(b, sizeof b, "start rc=%d", rc);
    put(b);
    free(buf);
    return;
  }
  while ((rc = sqlite3changeset_next(it)) == SQLITE_ROW) {
    const char *tab;
    int ncol, op, ind;
    sqlite3changeset_op(it, &tab, &ncol, &op, &ind);
    snprintf(b, sizeof b, "op=%d table=%s", op, tab);
    put(b);
    for (int i = 0; i < ncol; i++) {
      sqlite3_value *v = 0;
      if (op != SQLITE_DELETE && sqlite3changeset_new(it, i, &v) == SQLITE_OK && v) {
        const unsigned char *t = sqlite3_value_text(v);
        snprintf(b, sizeof b, " new[%d]=%s", i, t ? (const char *)t : "NULL");
        put(b);
      }
    }
    put(" ; ");
  }
  snprintf(b, sizeof b, "next rc=%d (%s)", rc, sqlite3_errstr(rc));
  put(b);
  sqlite3changeset_finalize(it);
  free(buf);
}

int main(void) {
  sqlite3 *db;
  if (sqlite3_open(":memory:", &db) != SQLITE_OK) return 1;
  sqlite3_create_function(db, "x_count", 1, SQLITE_UTF8, 0, 0, xc_step, xc_final);
  printf("ready\n");
  fflush(stdout);
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, stdin) > 0) {
    line[strcspn(line, "\r\n")] = 0;
    if (!*line) continue;
    outn = 0;
    out[0] = 0;
    if (!strncmp(line, ".changeset ", 11)) {
      changeset(line + 11);
    } else {
      char *err = 0;
      if (sqlite3_exec(db, line, row_cb, 0, &err) != SQLITE_OK) {
        if (outn) put(" ; ");
        put("Error: ");
        put(err ? err : "?");
        sqlite3_free(err);
      } else if (!outn) {
        put("ok");
      }
    }
    printf("%s\n", out);
    fflush(stdout);
  }
  sqlite3_close(db);
  return 0;
}
