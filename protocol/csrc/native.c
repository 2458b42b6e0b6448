/*
 * protocol._native: the per-row work of the table store in one call per batch.
 *
 * Two functions, both exact re-implementations of Python code that stays the reference
 * (tests compare them, value by value and bit by bit):
 *
 * lthash_update  the LtHash of protocol/digest.py: for each (key, item) the bucket is the first
 *                byte of BLAKE3(key) keyed with the bucket key, and the item's 2048-byte keyed
 *                BLAKE3 XOF, read as 1024 little-endian 16-bit lanes, is added to (or
 *                subtracted from) that bucket's lanes mod 2^16.
 * check_rows     parse framed records ("U,"/"D," then the canonical CSV of the values, or rows
 *                read back from a database without the op), check each value against its
 *                column (protocol/canonical.py, ColumnValidator) and add the upserted rows to
 *                an LtHash. It only ever ACCEPTS: any record it is not sure about
 *                (a bad value, a shape or a type it does not handle) makes it return False
 *                with the digest untouched, and the Python path then decides and names the
 *                row. So what C accepts is a subset of what Python accepts; never more.
 *
 * Both release the GIL while hashing. In Python the same work costs several microseconds a
 * row in bytes objects, joins and numpy calls (docs/tables.md, "Where the time goes").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* BLAKE3 is compiled into this file (not linked) so that xof.h can reach its root node. */
#include "blake3.c"
#include "xof.h"
#include "fields.h"
#include "sqlite_rows.h"

#define LANES 1024
#define BUCKETS 256
#define ITEM_BYTES (LANES * 2)
#define MAX_KEY_COLUMNS 16

typedef struct {
    const char *data;
    Py_ssize_t size;
} span;

typedef struct {
    uint16_t *lanes;
    int64_t *counts;
    blake3_hasher item_base, bucket_base;
} lthash;

/* ------------------------------------------------------------------ LtHash */

static void
lthash_add(lthash *state, const span *key_parts, int key_count, const char *item, size_t item_size,
           int sign)
{
    uint8_t out[ITEM_BYTES];
    uint8_t bucket;
    blake3_hasher hasher = state->bucket_base;
    for (int k = 0; k < key_count; k++) {
        if (k)
            blake3_hasher_update(&hasher, ",", 1);
        blake3_hasher_update(&hasher, key_parts[k].data, (size_t)key_parts[k].size);
    }
    blake3_hasher_finalize(&hasher, &bucket, 1);
    hasher = state->item_base;
    blake3_hasher_update(&hasher, item, item_size);
    xof_blocks(&hasher, out, ITEM_BYTES);
    uint16_t *row = state->lanes + (size_t)bucket * LANES;
    if (sign > 0) {
        for (int j = 0; j < LANES; j++)
            row[j] = (uint16_t)(row[j] + (uint16_t)(out[2 * j] | (out[2 * j + 1] << 8)));
    } else {
        for (int j = 0; j < LANES; j++)
            row[j] = (uint16_t)(row[j] - (uint16_t)(out[2 * j] | (out[2 * j + 1] << 8)));
    }
    state->counts[bucket] += sign;
}

typedef struct {
    Py_buffer lanes, counts;
    int have_lanes, have_counts;
} state_buffers;

static int
open_state(PyObject *lanes_obj, PyObject *counts_obj, const char *item_key, Py_ssize_t item_key_len,
           const char *bucket_key, Py_ssize_t bucket_key_len, state_buffers *buffers, lthash *state)
{
    memset(buffers, 0, sizeof(*buffers));
    if (item_key_len != BLAKE3_KEY_LEN || bucket_key_len != BLAKE3_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "keys of the item and bucket hashes must be 32 bytes");
        return -1;
    }
    if (PyObject_GetBuffer(lanes_obj, &buffers->lanes, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    buffers->have_lanes = 1;
    if (PyObject_GetBuffer(counts_obj, &buffers->counts, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    buffers->have_counts = 1;
    if (buffers->lanes.len != (Py_ssize_t)BUCKETS * ITEM_BYTES || buffers->counts.len != BUCKETS * 8) {
        PyErr_SetString(PyExc_ValueError, "lanes must be 256 x 1024 uint16 and counts 256 int64");
        return -1;
    }
    state->lanes = (uint16_t *)buffers->lanes.buf;
    state->counts = (int64_t *)buffers->counts.buf;
    blake3_hasher_init_keyed(&state->item_base, (const uint8_t *)item_key);
    blake3_hasher_init_keyed(&state->bucket_base, (const uint8_t *)bucket_key);
    return 0;
}

static void
close_state(state_buffers *buffers)
{
    if (buffers->have_counts)
        PyBuffer_Release(&buffers->counts);
    if (buffers->have_lanes)
        PyBuffer_Release(&buffers->lanes);
}

/* The UTF-8 of a str (cached by CPython) or the bytes of a bytes object. 1 ok, 0 not text
 * (lone surrogates: the caller decides), -1 error set. */
static int
text_of(PyObject *obj, span *out)
{
    if (PyBytes_Check(obj)) {
        out->data = PyBytes_AS_STRING(obj);
        out->size = PyBytes_GET_SIZE(obj);
        return 1;
    }
    if (PyUnicode_Check(obj)) {
        out->data = PyUnicode_AsUTF8AndSize(obj, &out->size);
        if (out->data)
            return 1;
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "expected str or bytes, not %.100s", Py_TYPE(obj)->tp_name);
    return -1;
}

/* spans of every element of a tuple; 1 ok, 0 some str is not valid text, -1 error */
static int
spans_of(PyObject *tuple, span *out)
{
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    for (Py_ssize_t i = 0; i < n; i++) {
        int ok = text_of(PyTuple_GET_ITEM(tuple, i), &out[i]);
        if (ok <= 0)
            return ok;
    }
    return 1;
}

PyDoc_STRVAR(lthash_update_doc,
"lthash_update(lanes, counts, keys, items, sign, item_key, bucket_key)\n\n"
"Add (sign=1) or remove (sign=-1) items[i] with key keys[i] (bytes, or str hashed as UTF-8)\n"
"into lanes (writable uint16 buffer, 256 x 1024, native order) and counts (int64 x 256).");

static PyObject *
lthash_update(PyObject *module, PyObject *args)
{
    PyObject *lanes_obj, *counts_obj, *keys_obj, *items_obj;
    int sign;
    const char *item_key, *bucket_key;
    Py_ssize_t item_key_len, bucket_key_len;
    if (!PyArg_ParseTuple(args, "OOOOiy#y#:lthash_update", &lanes_obj, &counts_obj, &keys_obj,
                          &items_obj, &sign, &item_key, &item_key_len, &bucket_key, &bucket_key_len))
        return NULL;
    if (sign != 1 && sign != -1) {
        PyErr_SetString(PyExc_ValueError, "sign must be 1 or -1");
        return NULL;
    }
    /* Tuples hold their own references: no other thread can free a row while the GIL is off. */
    PyObject *keys = PySequence_Tuple(keys_obj);
    PyObject *items = keys ? PySequence_Tuple(items_obj) : NULL;
    PyObject *result = NULL;
    span *spans = NULL;
    state_buffers buffers = {0};
    lthash state;
    if (!items)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (PyTuple_GET_SIZE(keys) != n) {
        PyErr_SetString(PyExc_ValueError, "keys and items differ in length");
        goto done;
    }
    if (open_state(lanes_obj, counts_obj, item_key, item_key_len, bucket_key, bucket_key_len, &buffers,
                   &state) < 0)
        goto done;
    spans = PyMem_Malloc(sizeof(span) * (size_t)(2 * n + 1));
    if (!spans) {
        PyErr_NoMemory();
        goto done;
    }
    int ok = spans_of(keys, spans);
    if (ok > 0)
        ok = spans_of(items, spans + n);
    if (ok == 0)
        PyErr_SetString(PyExc_UnicodeEncodeError, "a key or item is not valid Unicode text");
    if (ok <= 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        lthash_add(&state, &spans[i], 1, spans[n + i].data, (size_t)spans[n + i].size, sign);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(spans);
    close_state(&buffers);
    Py_XDECREF(items);
    Py_XDECREF(keys);
    return result;
}

/* ------------------------------------------------------------------ value checks */

enum kind {
    KIND_TEXT = 1,
    KIND_INTEGER = 2,
    KIND_DECIMAL = 3,
    KIND_DATE = 4,
    KIND_TIMESTAMP = 5,
    KIND_TIMESTAMPTZ = 6,
    KIND_BINARY = 7,
    KIND_BOOLEAN = 8,
};
enum format { FORMAT_NONE = 0, FORMAT_DATE = 1, FORMAT_DATETIME = 2 };

typedef struct {
    int kind, not_null, format;
    /* TEXT: a = max length (-1 none), b = length in bytes, c = fixed (no trailing blank)
     * INTEGER: lo, hi (clamped to int64)
     * DECIMAL: a = precision (-1 unconstrained), b = scale, c = max integer digits,
     *          d = max fraction digits (unconstrained only)
     * TIMESTAMP, TIMESTAMPTZ (UTC, "+00:00"): a = max fraction digits; fraction_ok = bit n
     *            set when Python's datetime.fromisoformat accepts n fraction digits
     * BINARY: a = max length in bytes (-1 none) */
    long long a, b, c, d;
    long long lo, hi;
    unsigned fraction_ok;
} column_plan;

typedef struct {
    const char *data; /* between the quotes, doubled quotes still doubled */
    size_t size;
    size_t quotes;    /* doubled quotes inside */
} field;

static int
digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static int
number(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static int
days_in(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month == 2 && (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
        return 29;
    return days[month - 1];
}

/* YYYY-MM-DD, a real calendar day of year 1..9999 (date.fromisoformat) */
static int
valid_date(const char *s, size_t n)
{
    if (n != 10 || s[4] != '-' || s[7] != '-' || !digits(s, 4) || !digits(s + 5, 2) || !digits(s + 8, 2))
        return 0;
    int year = number(s, 4), month = number(s + 5, 2), day = number(s + 8, 2);
    return year >= 1 && month >= 1 && month <= 12 && day >= 1 && day <= days_in(year, month);
}

/* YYYY-MM-DD HH:MM:SS then, if fraction_max > 0, optionally "." and 1..fraction_max digits,
 * the last not 0 (the canonical form), of a length datetime.fromisoformat accepts. */
static int
valid_timestamp(const char *s, size_t n, long long fraction_max, unsigned fraction_ok)
{
    if (n < 19 || !valid_date(s, 10) || s[10] != ' ' || s[13] != ':' || s[16] != ':' ||
        !digits(s + 11, 2) || !digits(s + 14, 2) || !digits(s + 17, 2))
        return 0;
    if (number(s + 11, 2) > 23 || number(s + 14, 2) > 59 || number(s + 17, 2) > 59)
        return 0;
    if (n == 19)
        return 1;
    size_t fraction = n - 20;
    return s[19] == '.' && fraction >= 1 && (long long)fraction <= fraction_max && fraction < 32 &&
           ((fraction_ok >> fraction) & 1) && digits(s + 20, fraction) && s[n - 1] != '0';
}

static int
valid_integer(const column_plan *plan, const char *s, size_t n)
{
    int negative = n > 0 && s[0] == '-';
    const char *d = s + negative;
    size_t count = n - (size_t)negative;
    if (count == 0 || count > 18 || !digits(d, count) || (d[0] == '0' && count > 1))
        return 0;
    if (negative && count == 1 && d[0] == '0')
        return 0;
    long long v = 0;
    for (size_t i = 0; i < count; i++)
        v = v * 10 + (d[i] - '0');
    if (negative)
        v = -v;
    return v >= plan->lo && v <= plan->hi;
}

static int
valid_decimal(const column_plan *plan, const char *s, size_t n)
{
    int negative = n > 0 && s[0] == '-';
    const char *p = s + negative, *end = s + n;
    const char *dot = memchr(p, '.', (size_t)(end - p));
    const char *whole_end = dot ? dot : end;
    size_t whole = (size_t)(whole_end - p);
    if (whole == 0 || !digits(p, whole) || (p[0] == '0' && whole > 1))
        return 0;
    size_t fraction = dot ? (size_t)(end - dot - 1) : 0;
    if (dot && !digits(dot + 1, fraction))
        return 0;
    if (plan->a >= 0) { /* NUMBER(p, s): exactly s fraction digits */
        long long allowed = plan->a - plan->b;
        if ((long long)fraction != plan->b || (dot && fraction == 0))
            return 0;
        if (allowed == 0 ? !(whole == 1 && p[0] == '0') : (long long)whole > allowed)
            return 0;
    } else { /* unconstrained: no trailing zero in a fraction */
        if ((long long)whole > plan->c || (dot && (fraction == 0 || (long long)fraction > plan->d ||
                                                    dot[fraction] == '0')))
            return 0;
    }
    if (negative && whole == 1 && p[0] == '0') {
        for (size_t i = 0; i < fraction; i++)
            if (dot[1 + i] != '0')
                return 1;
        return 0; /* -0, -0.00: not canonical */
    }
    return 1;
}

/* "\\x" and lowercase hex pairs, at most a bytes */
static int
valid_binary(const column_plan *plan, const char *s, size_t n)
{
    if (n < 2 || s[0] != '\\' || s[1] != 'x' || n % 2)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return plan->a < 0 || (long long)((n - 2) / 2) <= plan->a;
}

static int
valid_text(const column_plan *plan, const field *f)
{
    if (memchr(f->data, '\0', f->size))
        return 0;
    if (plan->c && f->size && f->data[f->size - 1] == ' ')
        return 0;
    if (plan->a >= 0) {
        size_t length = f->size - f->quotes;
        if (!plan->b) {
            length = 0;
            for (size_t i = 0; i < f->size; i++)
                length += ((unsigned char)f->data[i] & 0xC0) != 0x80;
            length -= f->quotes;
        }
        if ((long long)length > plan->a)
            return 0;
    }
    return 1;
}

static int
valid_value(const column_plan *plan, const field *f)
{
    if (plan->kind != KIND_TEXT && f->quotes)
        return 0;
    int ok;
    switch (plan->kind) {
    case KIND_TEXT: ok = valid_text(plan, f); break;
    case KIND_INTEGER: ok = valid_integer(plan, f->data, f->size); break;
    case KIND_DECIMAL: ok = valid_decimal(plan, f->data, f->size); break;
    case KIND_DATE: ok = valid_date(f->data, f->size); break;
    case KIND_TIMESTAMP: ok = valid_timestamp(f->data, f->size, plan->a, plan->fraction_ok); break;
    case KIND_TIMESTAMPTZ:
        ok = f->size > 6 && memcmp(f->data + f->size - 6, "+00:00", 6) == 0 &&
             valid_timestamp(f->data, f->size - 6, plan->a, plan->fraction_ok);
        break;
    case KIND_BINARY: ok = valid_binary(plan, f->data, f->size); break;
    case KIND_BOOLEAN:
        ok = (f->size == 4 && memcmp(f->data, "true", 4) == 0) ||
             (f->size == 5 && memcmp(f->data, "false", 5) == 0);
        break;
    default: return 0;
    }
    if (!ok || plan->format == FORMAT_NONE)
        return ok;
    if (f->quotes)
        return 0;
    if (plan->format == FORMAT_DATE)
        return valid_date(f->data, f->size);
    return valid_timestamp(f->data, f->size, 0, 0);
}

/* ------------------------------------------------------------------ records */

typedef struct {
    Py_ssize_t width;
    int key_count;
    Py_ssize_t key_positions[MAX_KEY_COLUMNS];
    column_plan *columns;
} row_plan;

enum mode { MODE_SNAPSHOT = 0, MODE_DELTA = 1, MODE_STORED = 2 };

/* Parse one record and check it; fill the key fields' raw spans (quotes included). Returns
 * 'U' for an upsert, 'D' for a delete (MODE_DELTA only: key values, every other value NULL),
 * 0 when the Python path must decide. MODE_STORED records have no op (rows read back). */
static int
check_record(const row_plan *plan, int mode, const char *s, Py_ssize_t n, span *key_parts)
{
    int op = 'U';
    const char *p = s, *end = s + n;
    if (mode != MODE_STORED) {
        if (n < 2 || s[1] != ',' || !(s[0] == 'U' || (s[0] == 'D' && mode == MODE_DELTA)))
            return 0;
        op = s[0];
        p += 2;
    }
    int next_key = 0;
    for (Py_ssize_t column = 0; column < plan->width; column++) {
        const column_plan *c = &plan->columns[column];
        const char *start = p;
        int is_key = next_key < plan->key_count && plan->key_positions[next_key] == column;
        if (p == end || *p == ',') { /* NULL */
            if ((c->not_null && op == 'U') || is_key)
                return 0;
        } else {
            if (*p != '"' || (op == 'D' && !is_key))
                return 0;
            field f = {p + 1, 0, 0};
            const char *q = closing_quote(f.data, end, &f.quotes);
            if (!q)
                return 0;
            f.size = (size_t)(q - f.data);
            p = q + 1;
            if (!valid_value(c, &f))
                return 0;
        }
        if (is_key) {
            key_parts[next_key].data = start;
            key_parts[next_key].size = p - start;
            next_key++;
        }
        if (column + 1 < plan->width) {
            if (p == end || *p != ',')
                return 0;
            p++;
        }
    }
    return p == end ? op : 0;
}

/* The canonical encoding of a record's key: its key fields joined by commas. */
static PyObject *
key_bytes(const span *parts, int count)
{
    Py_ssize_t size = count - 1;
    for (int k = 0; k < count; k++)
        size += parts[k].size;
    PyObject *key = PyBytes_FromStringAndSize(NULL, size);
    if (!key)
        return NULL;
    char *out = PyBytes_AS_STRING(key);
    for (int k = 0; k < count; k++) {
        if (k)
            *out++ = ',';
        memcpy(out, parts[k].data, (size_t)parts[k].size);
        out += parts[k].size;
    }
    return key;
}

static int
long_of(PyObject *tuple, Py_ssize_t index, long long *out)
{
    *out = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, index));
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* plan: (key_positions, ((kind, not_null, format, a, b, c, d, lo, hi, fraction_ok), ...)) */
static int
read_plan(PyObject *obj, row_plan *plan)
{
    PyObject *keys, *columns;
    if (!PyArg_ParseTuple(obj, "O!O!:plan", &PyTuple_Type, &keys, &PyTuple_Type, &columns))
        return -1;
    plan->width = PyTuple_GET_SIZE(columns);
    plan->key_count = (int)PyTuple_GET_SIZE(keys);
    if (plan->key_count < 1 || plan->key_count > MAX_KEY_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "plan: 1 to 16 key columns");
        return -1;
    }
    for (int k = 0; k < plan->key_count; k++) {
        long long position;
        if (long_of(keys, k, &position) < 0)
            return -1;
        if (position < 0 || position >= plan->width || (k && position <= plan->key_positions[k - 1])) {
            PyErr_SetString(PyExc_ValueError, "plan: key positions must ascend within the row");
            return -1;
        }
        plan->key_positions[k] = (Py_ssize_t)position;
    }
    plan->columns = PyMem_Calloc((size_t)plan->width + 1, sizeof(column_plan));
    if (!plan->columns) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < plan->width; i++) {
        column_plan *c = &plan->columns[i];
        PyObject *entry = PyTuple_GET_ITEM(columns, i);
        long long fields[10];
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 10) {
            PyErr_SetString(PyExc_ValueError, "plan: each column is a tuple of 10 integers");
            return -1;
        }
        for (int j = 0; j < 10; j++)
            if (long_of(entry, j, &fields[j]) < 0)
                return -1;
        c->kind = (int)fields[0];
        c->not_null = (int)fields[1];
        c->format = (int)fields[2];
        c->a = fields[3];
        c->b = fields[4];
        c->c = fields[5];
        c->d = fields[6];
        c->lo = fields[7];
        c->hi = fields[8];
        c->fraction_ok = (unsigned)fields[9];
        if (c->kind < KIND_TEXT || c->kind > KIND_BOOLEAN || c->format < FORMAT_NONE ||
            c->format > FORMAT_DATETIME) {
            PyErr_SetString(PyExc_ValueError, "plan: unknown column kind or format");
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(check_rows_doc,
"check_rows(records, plan, lanes, counts, item_key, bucket_key, mode) -> bool | list[bytes]\n\n"
"mode 0 (snapshot): framed upsert records; 1 (delta): upserts and deletes; 2 (stored): rows\n"
"read back from a database, no op. When every record is valid for its columns, the upserts\n"
"are added to the LtHash (lanes, counts) and the result is True (modes 0, 2) or the list of\n"
"every record's key encoding (mode 1). False: some record needs the Python path; nothing\n"
"was added.");

static PyObject *
check_rows(PyObject *module, PyObject *args)
{
    PyObject *records_obj, *plan_obj, *lanes_obj, *counts_obj;
    const char *item_key, *bucket_key;
    Py_ssize_t item_key_len, bucket_key_len;
    int mode;
    if (!PyArg_ParseTuple(args, "OOOOy#y#i:check_rows", &records_obj, &plan_obj, &lanes_obj, &counts_obj,
                          &item_key, &item_key_len, &bucket_key, &bucket_key_len, &mode))
        return NULL;
    if (mode < MODE_SNAPSHOT || mode > MODE_STORED) {
        PyErr_SetString(PyExc_ValueError, "mode must be 0 (snapshot), 1 (delta) or 2 (stored)");
        return NULL;
    }
    PyObject *records = PySequence_Tuple(records_obj);
    PyObject *result = NULL;
    span *texts = NULL, *keys = NULL;
    char *ops = NULL;
    row_plan plan = {0};
    state_buffers buffers = {0};
    lthash state;
    if (!records || read_plan(plan_obj, &plan) < 0)
        goto done;
    if (open_state(lanes_obj, counts_obj, item_key, item_key_len, bucket_key, bucket_key_len, &buffers,
                   &state) < 0)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(records);
    texts = PyMem_Malloc(sizeof(span) * (size_t)(n + 1));
    keys = PyMem_Malloc(sizeof(span) * (size_t)(n * plan.key_count + 1));
    ops = PyMem_Malloc((size_t)n + 1);
    if (!texts || !keys || !ops) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(records, i))) {
            /* str only: its UTF-8 is valid by construction, which the checks rely on */
            PyErr_SetString(PyExc_TypeError, "records must be str");
            goto done;
        }
    int ok = spans_of(records, texts);
    if (ok < 0)
        goto done;
    if (ok) {
        Py_ssize_t skip = mode == MODE_STORED ? 0 : 2;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; ok && i < n; i++)
            ok = ops[i] = (char)check_record(&plan, mode, texts[i].data, texts[i].size,
                                             &keys[i * plan.key_count]);
        if (ok) /* every record passed: only now touch the digest */
            for (Py_ssize_t i = 0; i < n; i++)
                if (ops[i] == 'U')
                    lthash_add(&state, &keys[i * plan.key_count], plan.key_count, texts[i].data + skip,
                               (size_t)(texts[i].size - skip), 1);
        Py_END_ALLOW_THREADS
    }
    if (!ok || mode != MODE_DELTA) {
        result = PyBool_FromLong(ok);
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *key = key_bytes(&keys[i * plan.key_count], plan.key_count);
        if (!key)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, key);
    }
done:
    PyMem_Free(ops);
    PyMem_Free(keys);
    PyMem_Free(texts);
    PyMem_Free(plan.columns);
    close_state(&buffers);
    Py_XDECREF(records);
    return result;
}

/* ------------------------------------------------------------------ values for drivers */

/* One framed record ("U," or "D," then width canonical fields) into a tuple of str/None;
 * the op goes to *op. NULL with no error set: not a canonical record (the Python parser
 * then names what is wrong). */
static PyObject *
record_values(PyObject *record, Py_ssize_t width, Py_UCS4 *op)
{
    int kind = PyUnicode_KIND(record);
    const void *data = PyUnicode_DATA(record);
    Py_ssize_t n = PyUnicode_GET_LENGTH(record), p = 2;
    if (n < 2 || PyUnicode_READ(kind, data, 1) != ',')
        return NULL;
    *op = PyUnicode_READ(kind, data, 0);
    if (*op != 'U' && *op != 'D')
        return NULL;
    PyObject *values = PyTuple_New(width);
    if (!values)
        return NULL;
    for (Py_ssize_t column = 0; column < width; column++) {
        PyObject *value;
        if (p == n || PyUnicode_READ(kind, data, p) == ',') {
            value = Py_None;
            Py_INCREF(value);
        } else {
            if (PyUnicode_READ(kind, data, p) != '"')
                goto not_canonical;
            Py_ssize_t start = ++p, quotes = 0;
            for (;; p++) {
                if (p >= n)
                    goto not_canonical;
                if (PyUnicode_READ(kind, data, p) == '"') {
                    if (p + 1 < n && PyUnicode_READ(kind, data, p + 1) == '"') {
                        quotes++;
                        p++;
                        continue;
                    }
                    break;
                }
            }
            value = PyUnicode_Substring(record, start, p++);
            if (value && quotes) {
                PyObject *doubled = PyUnicode_FromString("\"\""), *single = PyUnicode_FromString("\"");
                PyObject *unescaped = doubled && single ? PyUnicode_Replace(value, doubled, single, -1) : NULL;
                Py_XDECREF(doubled);
                Py_XDECREF(single);
                Py_SETREF(value, unescaped);
            }
            if (!value) {
                Py_DECREF(values);
                return NULL;
            }
        }
        PyTuple_SET_ITEM(values, column, value);
        if (column + 1 < width) {
            if (p == n || PyUnicode_READ(kind, data, p) != ',')
                goto not_canonical;
            p++;
        }
    }
    if (p == n)
        return values;
not_canonical:
    Py_DECREF(values);
    return NULL;
}

PyDoc_STRVAR(parse_rows_doc,
"parse_rows(records, width) -> (ops, rows) | None\n\n"
"Framed records (str) into their ops (a str, one letter a record) and value tuples (str, or\n"
"None for NULL), ready for a driver's executemany. None when a record is not in the\n"
"canonical encoding: the Python parser then says what is wrong. Nothing is validated.");

static PyObject *
parse_rows(PyObject *module, PyObject *args)
{
    PyObject *records_obj;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "On:parse_rows", &records_obj, &width))
        return NULL;
    if (width < 1) {
        PyErr_SetString(PyExc_ValueError, "width must be positive");
        return NULL;
    }
    PyObject *records = PySequence_Fast(records_obj, "records must be a sequence");
    if (!records)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(records);
    PyObject *rows = PyList_New(n), *ops = PyUnicode_New(n, 127), *result = NULL;
    if (!rows || !ops)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, i);
        Py_UCS4 op = 0;
        if (!PyUnicode_Check(record)) {
            PyErr_SetString(PyExc_TypeError, "records must be str");
            goto done;
        }
        PyObject *values = record_values(record, width, &op);
        if (!values) {
            if (!PyErr_Occurred())
                result = Py_None, Py_INCREF(result);
            goto done;
        }
        PyList_SET_ITEM(rows, i, values);
        PyUnicode_WRITE(PyUnicode_1BYTE_KIND, PyUnicode_DATA(ops), i, op);
    }
    result = PyTuple_Pack(2, ops, rows);
done:
    Py_XDECREF(ops);
    Py_XDECREF(rows);
    Py_DECREF(records);
    return result;
}

/* ------------------------------------------------------------------ framing */

PyDoc_STRVAR(split_records_doc,
"split_records(text, line) -> (records, numbers, rest, lines)\n\n"
"Cut decoded payload text into complete records: a newline ends a record unless it is inside\n"
"a quoted value (an odd number of quotes so far). records: each record's text without its\n"
"newline; numbers: the payload line each starts on (None when every record is one line, so\n"
"record i starts on line + i); rest: where the unfinished tail starts in text; lines: the\n"
"newlines consumed.");

static PyObject *
split_records(PyObject *module, PyObject *args)
{
    PyObject *text;
    Py_ssize_t line;
    if (!PyArg_ParseTuple(args, "Un:split_records", &text, &line))
        return NULL;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), start = 0, newlines = 0, start_line = line;
    int quoted = 0, multiline = 0;
    PyObject *records = PyList_New(0), *numbers = PyList_New(0), *result = NULL;
    if (!records || !numbers)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '"') {
            quoted ^= 1;
        } else if (c == '\n') {
            newlines++;
            if (quoted) {
                multiline = 1;
                continue;
            }
            PyObject *record = PyUnicode_Substring(text, start, i);
            PyObject *number = record ? PyLong_FromSsize_t(start_line) : NULL;
            int failed = !number || PyList_Append(records, record) < 0 || PyList_Append(numbers, number) < 0;
            Py_XDECREF(record);
            Py_XDECREF(number);
            if (failed)
                goto done;
            start = i + 1;
            start_line = line + newlines;
        }
    }
    result = Py_BuildValue("(OOnn)", records, multiline ? numbers : Py_None, start, start_line - line);
done:
    Py_XDECREF(records);
    Py_XDECREF(numbers);
    return result;
}

PyDoc_STRVAR(set_xof_width_doc,
"set_xof_width(width) -> int\n\n"
"Compute the XOF 16, 8 or 1 block(s) at a time (0: the widest this CPU supports); returns\n"
"the width now in use. For tests: every width gives the same bytes.");

static PyObject *
set_xof_width(PyObject *module, PyObject *arg)
{
    long width = PyLong_AsLong(arg);
    if (width == -1 && PyErr_Occurred())
        return NULL;
    int widest = widest_xof();
    if (width != 0 && width != 1 && width != 8 && width != 16) {
        PyErr_SetString(PyExc_ValueError, "width must be 0, 1, 8 or 16");
        return NULL;
    }
    xof_width = width == 0 || width > widest ? widest : (int)width;
    return PyLong_FromLong(xof_width);
}

PyDoc_STRVAR(sqlite_register_doc,
"sqlite_register(sqlite_module_path) -> None\n\n"
"Give every SQLite connection opened from now on the edu_rows table (sqlite_rows.c), in the\n"
"SQLite library used by the loaded module at sqlite_module_path (sqlite3's _sqlite3).\n"
"OSError saying why when it cannot.");

static PyObject *
sqlite_register(PyObject *module, PyObject *arg)
{
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(arg, &path))
        return NULL;
    char error[256];
    int rc = edu_rows_register(PyBytes_AS_STRING(path), error, sizeof error);
    Py_DECREF(path);
    if (rc != 0) {
        PyErr_SetString(PyExc_OSError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sqlite_register", sqlite_register, METH_O, sqlite_register_doc},
    {"set_xof_width", set_xof_width, METH_O, set_xof_width_doc},
    {"parse_rows", parse_rows, METH_VARARGS, parse_rows_doc},
    {"split_records", split_records, METH_VARARGS, split_records_doc},
    {"lthash_update", lthash_update, METH_VARARGS, lthash_update_doc},
    {"check_rows", check_rows, METH_VARARGS, check_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "protocol._native",
    "Per-row checks and LtHash updates in C (see protocol/csrc/native.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    xof_width = widest_xof();
    return PyModule_Create(&module);
}
