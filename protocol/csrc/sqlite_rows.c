/*
 * edu_rows: framed canonical records as an SQLite table, for the SQLite table store.
 *
 *     INSERT INTO t (a, b, c) SELECT c0, c1, c2 FROM edu_rows(:records, :plan)
 *
 * :records is a batch's framed records ("U," or "D," then the canonical CSV of the values,
 * one record after another, separated by newlines; a newline inside a quoted value belongs to
 * the value); :plan says, one letter a column, what each value is bound as -- exactly what
 * the SQLite dialect's Python binders make of it (connectors/stores/tables/dialects/sqlite.py):
 *
 *     t  TEXT as is          i  INTEGER (64-bit; the canonical "-?digits")
 *     x  BLOB from "\x" + hex    b  INTEGER 1 for "true", 0 for "false"
 *
 * Columns: op (the record's letter), c0 ... c999 (NULL beyond the plan), then the two hidden
 * arguments. The whole INSERT runs inside one sqlite3_step, which Python's sqlite3 module
 * calls with the GIL released: no Python object is made per row or per value, and the row
 * checks (other threads) run while SQLite inserts.
 *
 * It never guesses: a record that is not in the canonical encoding, or a value its letter
 * cannot take, fails the statement with an "edu_rows:" error (SQLite undoes the statement)
 * and the store then loads that batch through executemany, whose Python binders and the row
 * checks say what is wrong. Values are not validated here; the row checks do that.
 *
 * Registered with sqlite3_auto_extension in the very SQLite library Python's _sqlite3 module
 * uses (found through that module with dlopen/dlsym, so a statically linked SQLite is found
 * too), so every connection opened afterwards has it. It only reads its arguments.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite3ext.h"
SQLITE_EXTENSION_INIT1

#include "fields.h"
#include "sqlite_rows.h"

#define MAX_WIDTH 1000
#define COLUMN_OP 0
#define COLUMN_RECORDS (MAX_WIDTH + 1)
#define COLUMN_PLAN (MAX_WIDTH + 2)

typedef struct {
    const char *data; /* between the quotes, doubled quotes still doubled; NULL for SQL NULL */
    size_t size;
    size_t quotes;    /* doubled quotes inside */
} value_span;

typedef struct {
    sqlite3_vtab_cursor base;
    char *records, *plan, *scratch;
    size_t size, position, scratch_size;
    int width, eof;
    char op;
    sqlite3_int64 row;
    value_span values[MAX_WIDTH];
} rows_cursor;

static void *
zeroed(size_t size)
{
    void *memory = sqlite3_malloc64(size);
    if (memory)
        memset(memory, 0, size);
    return memory;
}

static int
rows_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out, char **error)
{
    (void)aux, (void)argc, (void)argv, (void)error;
    /* "op", then c0..c999 (at most 6 bytes each with the comma), then the hidden arguments */
    size_t capacity = 64 + MAX_WIDTH * 6, used;
    char *schema = sqlite3_malloc((int)capacity);
    if (!schema)
        return SQLITE_NOMEM;
    used = (size_t)snprintf(schema, capacity, "CREATE TABLE x(op");
    for (int i = 0; i < MAX_WIDTH; i++)
        used += (size_t)snprintf(schema + used, capacity - used, ",c%d", i);
    snprintf(schema + used, capacity - used, ",records HIDDEN,plan HIDDEN)");
    int rc = sqlite3_declare_vtab(db, schema);
    sqlite3_free(schema);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_vtab *table = zeroed(sizeof *table);
    if (!table)
        return SQLITE_NOMEM;
    *out = table;
    return SQLITE_OK;
}

static int
rows_disconnect(sqlite3_vtab *table)
{
    sqlite3_free(table);
    return SQLITE_OK;
}

/* Only usable with both arguments given: records first, plan second. */
static int
rows_best_index(sqlite3_vtab *table, sqlite3_index_info *info)
{
    (void)table;
    int records = -1, plan = -1;
    for (int i = 0; i < info->nConstraint; i++) {
        const struct sqlite3_index_constraint *c = &info->aConstraint[i];
        if (c->op != SQLITE_INDEX_CONSTRAINT_EQ)
            continue;
        if (c->iColumn == COLUMN_RECORDS) {
            if (!c->usable)
                return SQLITE_CONSTRAINT;
            records = i;
        } else if (c->iColumn == COLUMN_PLAN) {
            if (!c->usable)
                return SQLITE_CONSTRAINT;
            plan = i;
        }
    }
    if (records < 0 || plan < 0)
        return SQLITE_CONSTRAINT;
    info->aConstraintUsage[records].argvIndex = 1;
    info->aConstraintUsage[records].omit = 1;
    info->aConstraintUsage[plan].argvIndex = 2;
    info->aConstraintUsage[plan].omit = 1;
    info->estimatedCost = 1000;
    info->estimatedRows = 1000;
    return SQLITE_OK;
}

static int
rows_open(sqlite3_vtab *table, sqlite3_vtab_cursor **out)
{
    (void)table;
    rows_cursor *cursor = zeroed(sizeof *cursor);
    if (!cursor)
        return SQLITE_NOMEM;
    *out = &cursor->base;
    return SQLITE_OK;
}

static void
release(rows_cursor *cursor)
{
    sqlite3_free(cursor->records);
    sqlite3_free(cursor->plan);
    cursor->records = cursor->plan = NULL;
}

static int
rows_close(sqlite3_vtab_cursor *base)
{
    rows_cursor *cursor = (rows_cursor *)base;
    release(cursor);
    sqlite3_free(cursor->scratch);
    sqlite3_free(cursor);
    return SQLITE_OK;
}

static int
refuse(rows_cursor *cursor, char *message)
{
    sqlite3_free(cursor->base.pVtab->zErrMsg);
    cursor->base.pVtab->zErrMsg = message;
    return message ? SQLITE_ERROR : SQLITE_NOMEM;
}

/* A record not in the canonical encoding: the error names it. */
static int
fail(rows_cursor *cursor, const char *what)
{
    return refuse(cursor, sqlite3_mprintf("edu_rows: record %lld of the batch %s", (long long)cursor->row + 1, what));
}

/* Cut the next record into its op and value spans (the canonical encoding only). */
static int
rows_next(sqlite3_vtab_cursor *base)
{
    rows_cursor *cursor = (rows_cursor *)base;
    if (cursor->position > 0)
        cursor->row++;
    const char *p = cursor->records + cursor->position, *end = cursor->records + cursor->size;
    if (p == end) {
        cursor->eof = 1;
        return SQLITE_OK;
    }
    if (end - p < 2 || (p[0] != 'U' && p[0] != 'D') || p[1] != ',')
        return fail(cursor, "does not start with U, or D,");
    cursor->op = p[0];
    p += 2;
    for (int column = 0; column < cursor->width; column++) {
        value_span *v = &cursor->values[column];
        if (p == end || *p == ',' || *p == '\n') {
            v->data = NULL;
        } else {
            if (*p != '"')
                return fail(cursor, "has an unquoted value");
            v->quotes = 0;
            const char *q = closing_quote(++p, end, &v->quotes);
            if (!q)
                return fail(cursor, "has an unterminated quoted value");
            v->data = p;
            v->size = (size_t)(q - p);
            p = q + 1;
        }
        if (column + 1 < cursor->width) {
            if (p == end || *p != ',')
                return fail(cursor, "has fewer values than columns");
            p++;
        }
    }
    if (p != end) {
        if (*p != '\n')
            return fail(cursor, "has more values than columns");
        p++;
    }
    cursor->position = (size_t)(p - cursor->records);
    return SQLITE_OK;
}

static char *
copy_argument(sqlite3_value *value, size_t *size)
{
    const unsigned char *text = sqlite3_value_text(value);
    int n = sqlite3_value_bytes(value);
    char *copy = sqlite3_malloc(n + 1);
    if (copy) {
        memcpy(copy, text ? (const char *)text : "", (size_t)n);
        copy[n] = 0;
        *size = (size_t)n;
    }
    return copy;
}

static int
rows_filter(sqlite3_vtab_cursor *base, int index, const char *index_name, int argc, sqlite3_value **argv)
{
    (void)index, (void)index_name;
    rows_cursor *cursor = (rows_cursor *)base;
    release(cursor);
    cursor->position = cursor->size = 0;
    cursor->row = 0;
    cursor->eof = 0;
    if (argc != 2) /* rows_best_index asks for both */
        return refuse(cursor, sqlite3_mprintf("edu_rows: needs the records and the plan"));
    size_t plan_size = 0;
    cursor->records = copy_argument(argv[0], &cursor->size);
    cursor->plan = copy_argument(argv[1], &plan_size);
    if (!cursor->records || !cursor->plan)
        return SQLITE_NOMEM;
    if (plan_size < 1 || plan_size > MAX_WIDTH || strspn(cursor->plan, "tixb") != plan_size)
        return refuse(cursor, sqlite3_mprintf("edu_rows: the batch comes with a plan that is not 1 to 1000 "
                                              "of the letters t, i, x, b"));
    cursor->width = (int)plan_size;
    /* a newline after the last record ends it like any other (rows_next) */
    return rows_next(base);
}

static int
rows_eof(sqlite3_vtab_cursor *base)
{
    return ((rows_cursor *)base)->eof;
}

static int
value_error(sqlite3_context *context, rows_cursor *cursor, int column, const char *what)
{
    char *message = sqlite3_mprintf("edu_rows: record %lld of the batch, value %d: %s",
                                    (long long)cursor->row + 1, column + 1, what);
    sqlite3_result_error(context, message ? message : "edu_rows: bad value", -1);
    sqlite3_free(message);
    return SQLITE_ERROR;
}

static char *
scratch(rows_cursor *cursor, size_t size)
{
    if (size > cursor->scratch_size) {
        char *grown = sqlite3_realloc64(cursor->scratch, size);
        if (!grown)
            return NULL;
        cursor->scratch = grown;
        cursor->scratch_size = size;
    }
    return cursor->scratch;
}

static int
hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int
rows_column(sqlite3_vtab_cursor *base, sqlite3_context *context, int column)
{
    rows_cursor *cursor = (rows_cursor *)base;
    if (column == COLUMN_OP) {
        sqlite3_result_text(context, &cursor->op, 1, SQLITE_TRANSIENT);
        return SQLITE_OK;
    }
    int index = column - 1;
    if (index < 0 || index >= cursor->width || !cursor->values[index].data) {
        sqlite3_result_null(context);
        return SQLITE_OK;
    }
    const value_span *v = &cursor->values[index];
    const char *s = v->data;
    size_t n = v->size;
    char kind = cursor->plan[index];
    if (kind == 't') {
        if (v->quotes) { /* undouble: "" -> " */
            char *out = scratch(cursor, n);
            if (!out)
                return SQLITE_NOMEM;
            size_t used = 0;
            for (size_t i = 0; i < n; i++) {
                out[used++] = s[i];
                if (s[i] == '"')
                    i++;
            }
            s = out;
            n = used;
        }
        sqlite3_result_text(context, s, (int)n, SQLITE_TRANSIENT);
        return SQLITE_OK;
    }
    if (v->quotes)
        return value_error(context, cursor, index, "holds a quote");
    if (kind == 'i') {
        size_t i = s[0] == '-' ? 1 : 0;
        uint64_t magnitude = 0, limit = i ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        if (i == n)
            return value_error(context, cursor, index, "is not an integer");
        for (; i < n; i++) {
            if (s[i] < '0' || s[i] > '9')
                return value_error(context, cursor, index, "is not an integer");
            unsigned digit = (unsigned)(s[i] - '0');
            if (magnitude > (limit - digit) / 10)
                return value_error(context, cursor, index, "is out of the 64-bit range");
            magnitude = magnitude * 10 + digit;
        }
        sqlite3_result_int64(context, s[0] == '-' ? (sqlite3_int64)(0 - magnitude) : (sqlite3_int64)magnitude);
        return SQLITE_OK;
    }
    if (kind == 'b') {
        if (n == 4 && memcmp(s, "true", 4) == 0)
            sqlite3_result_int(context, 1);
        else if (n == 5 && memcmp(s, "false", 5) == 0)
            sqlite3_result_int(context, 0);
        else
            return value_error(context, cursor, index, "is not true or false");
        return SQLITE_OK;
    }
    /* 'x' */
    if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2)
        return value_error(context, cursor, index, "is not \\x and pairs of hex digits");
    size_t bytes = (n - 2) / 2;
    char *blob = scratch(cursor, bytes + 1);
    if (!blob)
        return SQLITE_NOMEM;
    for (size_t i = 0; i < bytes; i++) {
        int high = hex_digit(s[2 + 2 * i]), low = hex_digit(s[3 + 2 * i]);
        if (high < 0 || low < 0)
            return value_error(context, cursor, index, "is not \\x and pairs of hex digits");
        blob[i] = (char)(high << 4 | low);
    }
    sqlite3_result_blob(context, blob, (int)bytes, SQLITE_TRANSIENT);
    return SQLITE_OK;
}

static int
rows_rowid(sqlite3_vtab_cursor *base, sqlite3_int64 *rowid)
{
    *rowid = ((rows_cursor *)base)->row + 1;
    return SQLITE_OK;
}

static sqlite3_module rows_module = {
    .iVersion = 0,
    .xCreate = NULL, /* eponymous only: no CREATE VIRTUAL TABLE ... USING edu_rows */
    .xConnect = rows_connect,
    .xBestIndex = rows_best_index,
    .xDisconnect = rows_disconnect,
    .xDestroy = rows_disconnect,
    .xOpen = rows_open,
    .xClose = rows_close,
    .xFilter = rows_filter,
    .xNext = rows_next,
    .xEof = rows_eof,
    .xColumn = rows_column,
    .xRowid = rows_rowid,
};

/* Run by SQLite for each connection it opens once registered. Never fails the open. */
static int
rows_entry(sqlite3 *db, char **error, const sqlite3_api_routines *api)
{
    (void)error;
    if (!api)
        return SQLITE_OK;
    SQLITE_EXTENSION_INIT2(api);
    sqlite3_create_module(db, "edu_rows", &rows_module, NULL);
    return SQLITE_OK;
}

int
edu_rows_register(const char *sqlite_module_path, char *error, size_t error_size)
{
    void *handle = dlopen(sqlite_module_path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) {
        snprintf(error, error_size, "%s is not loaded", sqlite_module_path);
        return -1;
    }
    int (*auto_extension)(void (*)(void)) = (int (*)(void (*)(void)))dlsym(handle, "sqlite3_auto_extension");
    int (*version)(void) = (int (*)(void))dlsym(handle, "sqlite3_libversion_number");
    int rc = -1;
    if (!auto_extension || !version)
        snprintf(error, error_size, "its SQLite library does not export sqlite3_auto_extension");
    else if (version() < 3009000) /* table-valued functions */
        snprintf(error, error_size, "SQLite %d is older than 3.9.0", version());
    else if (auto_extension((void (*)(void))rows_entry) != 0)
        snprintf(error, error_size, "sqlite3_auto_extension failed");
    else
        rc = 0;
    dlclose(handle); /* RTLD_NOLOAD took a reference; Python's import keeps its own */
    return rc;
}
