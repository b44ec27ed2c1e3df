/* Avro binary records straight into Arrow column buffers (see streams/events/columnar.py).

   decode(program, messages, starts, enveloped) walks each message from its start offset:
   an envelope's body is an array of records (Avro blocks of items, a zero count ends it),
   any other body is one record. Each record is read by the program: one (op, argument)
   byte pair per column, in the writer schema's field order, nested records already
   flattened. A value goes straight into its column's buffers, laid out as Arrow's
   (offsets, data, validity bitmaps, 16-byte decimals), so nothing per value becomes a
   Python object.

   A message this reader does not take exactly as fastavro would (truncated, malformed,
   invalid UTF-8, a union branch or boolean byte out of range, an int out of 32 bits, a
   timestamp outside Python's datetime range, a decimal over 38 digits, a map with a key
   twice or more than MAP_ENTRIES_MAX entries, trailing bytes) is rolled back out of every
   column and its index returned in `failed`: the caller decodes it the usual way, which
   says what is wrong with it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum {
    OP_STRING = 1, OP_LONG = 2, OP_INT = 3, OP_BOOL = 4, OP_OPT_STRING = 5,
    OP_MAP_LONG = 6, OP_MAP_STRING = 7, OP_OPT_DECIMAL = 8,
};

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

/* Buffers of one column; which are used depends on its op:
   STRING: offsets (int32), data; OPT_STRING: + validity; LONG: values (int64);
   INT: values (int32); BOOL: validity holds the values' bits;
   MAP_LONG: offsets (entries), key_offsets, key_data, values (int64);
   MAP_STRING: offsets, key_offsets, key_data, value offsets in values, value data in data;
   OPT_DECIMAL: validity, values (16 bytes each). */
typedef struct {
    int op, arg;
    Buf offsets, data, validity, values, key_offsets, key_data;
    Py_ssize_t rows, nulls, entries;
} Column;

typedef struct {
    Py_ssize_t offsets, data, values, key_offsets, key_data, rows, nulls, entries;
} Mark;

static int grow(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = PyMem_Realloc(b->data, cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->data = p; b->cap = cap;
    return 0;
}

static int put(Buf *b, const void *src, Py_ssize_t n) {
    if (grow(b, n)) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int put_i32(Buf *b, int32_t v) { return put(b, &v, 4); }

/* A bit of a bitmap at row `row` (bytes added as rows grow; a rolled-back bit is rewritten). */
static int put_bit(Buf *b, Py_ssize_t row, int bit) {
    Py_ssize_t byte = row >> 3;
    if (byte >= b->len) {
        if (grow(b, byte + 1 - b->len)) return -1;
        memset(b->data + b->len, 0, byte + 1 - b->len);
        b->len = byte + 1;
    }
    if (bit) b->data[byte] |= (char)(1 << (row & 7));
    else b->data[byte] &= (char)~(1 << (row & 7));
    return 0;
}

typedef struct {
    const unsigned char *p, *end;
} Reader;

/* 1: read; 0: malformed (no Python error set). */
static int read_long(Reader *r, int64_t *out) {
    uint64_t acc = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return 0;
        unsigned char byte = *r->p++;
        if (shift == 63 && (byte & 0x7e)) return 0;  /* more than 64 bits */
        acc |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = (int64_t)(acc >> 1) ^ -(int64_t)(acc & 1);
            return 1;
        }
    }
    return 0;
}

/* Strict UTF-8, as Python decodes it: no overlong forms, no surrogates, at most U+10FFFF. */
static int valid_utf8(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) { len = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
        else return 0;
        if (i + len > n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k < len; k++) if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

/* A string's bytes (length-prefixed): 1 read, 0 malformed. */
static int read_text(Reader *r, const unsigned char **s, Py_ssize_t *n) {
    int64_t len;
    if (!read_long(r, &len) || len < 0 || len > r->end - r->p) return 0;
    *s = r->p; *n = (Py_ssize_t)len;
    r->p += len;
    return valid_utf8(*s, *n);
}

/* Append a string to (offsets, data); -1 on a Python error. */
static int put_text(Buf *offsets, Buf *data, const unsigned char *s, Py_ssize_t n) {
    if (data->len + n > INT32_MAX) { PyErr_SetString(PyExc_OverflowError, "column over 2 GB"); return -1; }
    if (put(data, s, n)) return -1;
    return put_i32(offsets, (int32_t)data->len);
}

/* Avro's block count: a negative count is followed by the block's size in bytes. */
static int read_count(Reader *r, int64_t *count) {
    if (!read_long(r, count)) return 0;
    if (*count < 0) {
        int64_t size;
        if (*count == INT64_MIN || !read_long(r, &size)) return 0;
        *count = -*count;
    }
    return *count <= r->end - r->p;  /* every item takes a byte at least */
}

#define DATETIME_MIN_MS (-62135596800000LL)  /* 0001-01-01 */
#define DATETIME_MAX_MS (253402300799999LL)  /* 9999-12-31 23:59:59.999 */

#define MAP_ENTRIES_MAX 256  /* entries of one map read here; a longer map goes to fastavro */

/* A map<string, long|string>: 1 read, 0 malformed, -1 Python error. */
static int read_map(Reader *r, Column *c) {
    Py_ssize_t first = c->entries;
    for (;;) {
        int64_t count;
        if (!read_count(r, &count)) return 0;
        if (count == 0) break;
        for (int64_t i = 0; i < count; i++) {
            const unsigned char *key; Py_ssize_t key_len;
            /* The check for a key given twice below looks at every earlier key: past
               MAP_ENTRIES_MAX a map goes the slow way, so no message costs quadratic time. */
            if (c->entries - first >= MAP_ENTRIES_MAX) return 0;
            if (!read_text(r, &key, &key_len)) return 0;
            /* A key twice: fastavro keeps the last value; take the message the slow way. */
            const int32_t *ko = (const int32_t *)c->key_offsets.data;
            for (Py_ssize_t e = first; e < c->entries; e++)
                if (ko[e + 1] - ko[e] == key_len && !memcmp(c->key_data.data + ko[e], key, key_len)) return 0;
            if (put_text(&c->key_offsets, &c->key_data, key, key_len)) return -1;
            if (c->op == OP_MAP_LONG) {
                int64_t v;
                if (!read_long(r, &v)) return 0;
                if (put(&c->values, &v, 8)) return -1;
            } else {
                const unsigned char *s; Py_ssize_t n;
                if (!read_text(r, &s, &n)) return 0;
                if (put_text(&c->values, &c->data, s, n)) return -1;
            }
            c->entries++;
        }
    }
    if (c->entries > INT32_MAX) return 0;
    return put_i32(&c->offsets, (int32_t)c->entries) ? -1 : 1;
}

/* |v| < 10**38, v a 128-bit two's complement integer. */
static int within_38_digits(__int128 v) {
    const __int128 limit = (__int128)10000000000000000000ULL * (__int128)10000000000000000000ULL;
    return v < limit && v > -limit;
}

/* One record: 1 read, 0 malformed, -1 Python error. */
static int read_record(Reader *r, Column *cols, Py_ssize_t ncols) {
    for (Py_ssize_t k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        int64_t v;
        const unsigned char *s; Py_ssize_t n;
        int done;
        switch (c->op) {
        case OP_STRING:
            if (!read_text(r, &s, &n)) return 0;
            if (put_text(&c->offsets, &c->data, s, n)) return -1;
            break;
        case OP_LONG:
            if (!read_long(r, &v)) return 0;
            if (c->arg == 1 && (v < DATETIME_MIN_MS || v > DATETIME_MAX_MS)) return 0;  /* timestamp-millis */
            if (put(&c->values, &v, 8)) return -1;
            break;
        case OP_INT:
            if (!read_long(r, &v) || v < INT32_MIN || v > INT32_MAX) return 0;
            if (put_i32(&c->values, (int32_t)v)) return -1;
            break;
        case OP_BOOL:
            if (r->p >= r->end || *r->p > 1) return 0;
            if (put_bit(&c->validity, c->rows, *r->p++)) return -1;
            break;
        case OP_OPT_STRING:
        case OP_OPT_DECIMAL:
            if (!read_long(r, &v) || (v != 0 && v != 1)) return 0;
            if (v == c->arg) {  /* the null branch */
                if (put_bit(&c->validity, c->rows, 0)) return -1;
                c->nulls++;
                if (c->op == OP_OPT_STRING) { if (put_i32(&c->offsets, (int32_t)c->data.len)) return -1; }
                else { static const char zero[16]; if (put(&c->values, zero, 16)) return -1; }
                break;
            }
            if (put_bit(&c->validity, c->rows, 1)) return -1;
            if (c->op == OP_OPT_STRING) {
                if (!read_text(r, &s, &n)) return 0;
                if (put_text(&c->offsets, &c->data, s, n)) return -1;
            } else {
                int64_t len;
                if (!read_long(r, &len) || len < 0 || len > r->end - r->p || len > 16) return 0;
                __int128 unscaled = 0;
                if (len > 0) {
                    unscaled = (r->p[0] & 0x80) ? -1 : 0;  /* big-endian two's complement, sign-extended */
                    for (int64_t i = 0; i < len; i++) unscaled = (__int128)(((unsigned __int128)unscaled << 8) | r->p[i]);
                }
                r->p += len;
                if (!within_38_digits(unscaled)) return 0;
                if (put(&c->values, &unscaled, 16)) return -1;  /* little-endian, as Arrow lays it */
            }
            break;
        case OP_MAP_LONG:
        case OP_MAP_STRING:
            done = read_map(r, c);
            if (done != 1) return done;
            break;
        default:
            PyErr_Format(PyExc_ValueError, "unknown op %d", c->op);
            return -1;
        }
        c->rows++;
    }
    return 1;
}

static void mark(Column *c, Mark *m) {
    m->offsets = c->offsets.len; m->data = c->data.len; m->values = c->values.len;
    m->key_offsets = c->key_offsets.len; m->key_data = c->key_data.len;
    m->rows = c->rows; m->nulls = c->nulls; m->entries = c->entries;
}

static void rollback(Column *c, const Mark *m) {
    c->offsets.len = m->offsets; c->data.len = m->data; c->values.len = m->values;
    c->key_offsets.len = m->key_offsets; c->key_data.len = m->key_data;
    c->rows = m->rows; c->nulls = m->nulls; c->entries = m->entries;
    c->validity.len = (m->rows + 7) >> 3;  /* later bits of the last byte are rewritten */
}

static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len);
}

/* (offsets, data, validity, values, key_offsets, key_data, nulls) of a column. */
static PyObject *column_tuple(Column *c) {
    return Py_BuildValue("(NNNNNNn)", bytes_of(&c->offsets), bytes_of(&c->data), bytes_of(&c->validity),
                         bytes_of(&c->values), bytes_of(&c->key_offsets), bytes_of(&c->key_data), c->nulls);
}

static void free_columns(Column *cols, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        Buf *bufs[] = {&cols[k].offsets, &cols[k].data, &cols[k].validity, &cols[k].values,
                       &cols[k].key_offsets, &cols[k].key_data};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) PyMem_Free(bufs[i]->data);
    }
    PyMem_Free(cols);
}

/* Read one message's records into the columns; bounds get each record's (start, end).
   1 read, 0 malformed, -1 Python error. */
static int read_message(Reader *r, int enveloped, Column *cols, Py_ssize_t ncols, Buf *bounds, Py_ssize_t base,
                        int64_t *records) {
    const unsigned char *origin = r->p - base;
    *records = 0;
    for (;;) {
        int64_t count = 1;
        if (enveloped) {
            if (!read_count(r, &count)) return 0;
            if (count == 0) break;
        }
        for (int64_t i = 0; i < count; i++) {
            int64_t at[2] = {r->p - origin, 0};
            int done = read_record(r, cols, ncols);
            if (done != 1) return done;
            at[1] = r->p - origin;
            if (put(bounds, at, 16)) return -1;
            (*records)++;
        }
        if (!enveloped) break;
    }
    return r->p == r->end;  /* trailing bytes: malformed */
}

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer program;
    PyObject *messages, *starts, *enveloped;
    if (!PyArg_ParseTuple(args, "y*OOO", &program, &messages, &starts, &enveloped)) return NULL;
    PyObject *result = NULL, *failed = NULL, *per_message = NULL;
    Py_ssize_t ncols = program.len / 2;
    Column *cols = PyMem_Calloc(ncols ? ncols : 1, sizeof(Column));
    Mark *marks = PyMem_Calloc(ncols ? ncols : 1, sizeof(Mark));
    Buf bounds = {0};
    if (!cols || !marks) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < ncols; k++) {
        cols[k].op = ((unsigned char *)program.buf)[2 * k];
        cols[k].arg = ((unsigned char *)program.buf)[2 * k + 1];
        if (put_i32(&cols[k].offsets, 0)) goto done;
        if (cols[k].op == OP_MAP_LONG || cols[k].op == OP_MAP_STRING) {
            if (put_i32(&cols[k].key_offsets, 0)) goto done;
            if (cols[k].op == OP_MAP_STRING && put_i32(&cols[k].values, 0)) goto done;
        }
    }
    Py_ssize_t n = PySequence_Size(messages);
    if (n < 0 || PySequence_Size(starts) != n || PySequence_Size(enveloped) != n) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "messages, starts and enveloped differ in length");
        goto done;
    }
    failed = PyList_New(0);
    per_message = PyList_New(n);
    if (!failed || !per_message) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *message = PySequence_GetItem(messages, i);
        PyObject *start_obj = PySequence_GetItem(starts, i);
        PyObject *env_obj = PySequence_GetItem(enveloped, i);
        Py_buffer view;
        int ok = message && start_obj && env_obj && PyObject_GetBuffer(message, &view, PyBUF_SIMPLE) == 0;
        Py_ssize_t start = ok ? PyLong_AsSsize_t(start_obj) : -1;
        int env = ok ? PyObject_IsTrue(env_obj) : -1;
        Py_XDECREF(message); Py_XDECREF(start_obj); Py_XDECREF(env_obj);
        if (!ok) goto done;
        if (start < 0 || env < 0 || start > view.len) {
            PyBuffer_Release(&view);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "start offset outside the message");
            goto done;
        }
        for (Py_ssize_t k = 0; k < ncols; k++) mark(&cols[k], &marks[k]);
        Py_ssize_t bounds_mark = bounds.len;
        Reader r = {(const unsigned char *)view.buf + start, (const unsigned char *)view.buf + view.len};
        int64_t records = 0;
        int read = read_message(&r, env, cols, ncols, &bounds, start, &records);
        PyBuffer_Release(&view);
        if (read < 0) goto done;
        if (read == 0) {
            for (Py_ssize_t k = 0; k < ncols; k++) rollback(&cols[k], &marks[k]);
            bounds.len = bounds_mark;
            records = 0;
            PyObject *index = PyLong_FromSsize_t(i);
            if (!index || PyList_Append(failed, index)) { Py_XDECREF(index); goto done; }
            Py_DECREF(index);
        }
        PyObject *count = PyLong_FromLongLong(records);
        if (!count) goto done;
        PyList_SET_ITEM(per_message, i, count);
    }
    PyObject *columns = PyList_New(ncols);
    if (!columns) goto done;
    for (Py_ssize_t k = 0; k < ncols; k++) {
        PyObject *t = column_tuple(&cols[k]);
        if (!t) { Py_DECREF(columns); goto done; }
        PyList_SET_ITEM(columns, k, t);
    }
    result = Py_BuildValue("(NOON)", columns, per_message, failed, bytes_of(&bounds));
done:
    Py_XDECREF(failed);
    Py_XDECREF(per_message);
    if (cols) free_columns(cols, ncols); else PyMem_Free(cols);
    PyMem_Free(marks);
    PyMem_Free(bounds.data);
    PyBuffer_Release(&program);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(program, messages, starts, enveloped) -> (columns, records per message, failed, record bounds)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_columnar", NULL, -1, methods};

PyMODINIT_FUNC PyInit__columnar(void) { return PyModule_Create(&module); }
