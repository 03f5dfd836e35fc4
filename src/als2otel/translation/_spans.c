/* The per-span work of translation in C: trace context, span ids and a span's encoding.

   The native twins of functions in ids.py and wire.py, which stay the definitions: each
   function here gives the bytes its Python twin gives for the same arguments, or, where it
   answers None (trace_context, for a header value out of the ordinary), the caller asks the
   Python twin. tests/translation/test_native_spans.py compares them argument for argument, and
   whole pipelines with and without this module byte for byte.

   Span ids are BLAKE2b (RFC 7693), as hashlib.blake2b computes them; the implementation below
   is the RFC's, checked against hashlib by the tests. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- BLAKE2b (RFC 7693), unkeyed, digests of up to 64 bytes --------------------------------------- */

typedef struct {
    uint8_t block[128];
    uint64_t h[8];
    uint64_t t[2];
    size_t c; /* bytes in block */
    size_t digest_size;
} Blake2b;

static const uint64_t BLAKE2B_IV[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define G(a, b, c, d, x, y)                                                                                  \
    do {                                                                                                     \
        v[a] = v[a] + v[b] + (x);                                                                            \
        v[d] = ROTR64(v[d] ^ v[a], 32);                                                                      \
        v[c] = v[c] + v[d];                                                                                  \
        v[b] = ROTR64(v[b] ^ v[c], 24);                                                                      \
        v[a] = v[a] + v[b] + (y);                                                                            \
        v[d] = ROTR64(v[d] ^ v[a], 16);                                                                      \
        v[c] = v[c] + v[d];                                                                                  \
        v[b] = ROTR64(v[b] ^ v[c], 63);                                                                      \
    } while (0)

static uint64_t
load64(const uint8_t *p) /* little-endian */
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t value;
    memcpy(&value, p, 8);
    return value;
#else
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) {
        value = value << 8 | p[i];
    }
    return value;
#endif
}

static void
blake2b_compress(Blake2b *s, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = BLAKE2B_IV[i];
    }
    v[12] ^= s->t[0];
    v[13] ^= s->t[1];
    if (last) {
        v[14] = ~v[14];
    }
    for (int i = 0; i < 16; i++) {
        m[i] = load64(s->block + 8 * i);
    }
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = SIGMA[r];
        G(0, 4, 8, 12, m[z[0]], m[z[1]]);
        G(1, 5, 9, 13, m[z[2]], m[z[3]]);
        G(2, 6, 10, 14, m[z[4]], m[z[5]]);
        G(3, 7, 11, 15, m[z[6]], m[z[7]]);
        G(0, 5, 10, 15, m[z[8]], m[z[9]]);
        G(1, 6, 11, 12, m[z[10]], m[z[11]]);
        G(2, 7, 8, 13, m[z[12]], m[z[13]]);
        G(3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) {
        s->h[i] ^= v[i] ^ v[i + 8];
    }
}

static void
blake2b_init(Blake2b *s, size_t digest_size)
{
    memcpy(s->h, BLAKE2B_IV, sizeof s->h);
    s->h[0] ^= 0x01010000ULL ^ digest_size; /* no key */
    s->t[0] = s->t[1] = 0;
    s->c = 0;
    s->digest_size = digest_size;
}

static void
blake2b_update(Blake2b *s, const void *data, size_t size)
{
    const uint8_t *p = data;
    while (size) {
        if (s->c == 128) { /* full, and more follows: not the last block */
            s->t[0] += 128;
            if (s->t[0] < 128) {
                s->t[1]++;
            }
            blake2b_compress(s, 0);
            s->c = 0;
        }
        size_t n = 128 - s->c < size ? 128 - s->c : size;
        memcpy(s->block + s->c, p, n);
        s->c += n;
        p += n;
        size -= n;
    }
}

static void
blake2b_final(Blake2b *s, uint8_t *out)
{
    s->t[0] += s->c;
    if (s->t[0] < s->c) {
        s->t[1]++;
    }
    memset(s->block + s->c, 0, 128 - s->c);
    blake2b_compress(s, 1);
    for (size_t i = 0; i < s->digest_size; i++) {
        out[i] = (uint8_t)(s->h[i >> 3] >> (8 * (i & 7)));
    }
}

/* An id that is all zeros is invalid in OTLP: ids._checked. */
static void
checked(uint8_t *id, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (id[i]) {
            return;
        }
    }
    memset(id, 1, size);
}

/* ---- ids.py -------------------------------------------------------------------------------------- */

static const char *
utf8(PyObject *text, Py_ssize_t *size) /* str.encode(): NULL with UnicodeEncodeError set */
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "expected a str");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(text, size);
}

/* value in decimal at p, as str(int) writes it; the end. */
static char *
write_decimal(char *p, long long value)
{
    char digits[24];
    int n = 0;
    unsigned long long rest = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[n++] = (char)('0' + rest % 10);
        rest /= 10;
    } while (rest);
    if (value < 0) {
        *p++ = '-';
    }
    while (n) {
        *p++ = digits[--n];
    }
    return p;
}

/* ids.span_id_python into out: BLAKE2b-64 of trace_id, kind, key and the repeat (when not 0). */
static void
span_id_of(const void *trace_id, Py_ssize_t trace_size, const void *kind, Py_ssize_t kind_size, const char *key,
           Py_ssize_t key_size, long long repeat, uint8_t *out)
{
    Blake2b s;
    blake2b_init(&s, 8);
    blake2b_update(&s, trace_id, trace_size);
    blake2b_update(&s, kind, kind_size);
    blake2b_update(&s, key, key_size);
    if (repeat) {
        char text[32], *end = text;
        *end++ = '\x1f';
        end = write_decimal(end, repeat);
        *end++ = '\x1f';
        blake2b_update(&s, text, end - text);
    }
    else {
        blake2b_update(&s, "\x1f", 1);
    }
    blake2b_final(&s, out);
    checked(out, 8);
}

/* span_id(trace_id, kind, key, repeat) -> bytes: ids.span_id_python. */
static PyObject *
span_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "span_id(trace_id: bytes, kind: bytes, key: str, repeat: int)");
        return NULL;
    }
    Py_ssize_t key_size;
    const char *key = utf8(args[2], &key_size);
    if (key == NULL) {
        return NULL;
    }
    long long repeat = PyLong_AsLongLong(args[3]);
    if (repeat == -1 && PyErr_Occurred()) {
        return NULL;
    }
    uint8_t digest[8];
    span_id_of(PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), PyBytes_AS_STRING(args[1]),
               PyBytes_GET_SIZE(args[1]), key, key_size, repeat, digest);
    return PyBytes_FromStringAndSize((const char *)digest, 8);
}

/* ids._digest(*parts, size=16) of text parts already encoded, into out. */
static void
digest16(const char *first, Py_ssize_t first_size, const char *second, Py_ssize_t second_size, uint8_t *out)
{
    Blake2b s;
    blake2b_init(&s, 16);
    blake2b_update(&s, first, first_size);
    blake2b_update(&s, "\x1f", 1);
    if (second != NULL) {
        blake2b_update(&s, second, second_size);
        blake2b_update(&s, "\x1f", 1);
    }
    blake2b_final(&s, out);
    checked(out, 16);
}

static int8_t hex_digits[256]; /* each byte's value as a hex digit, -1 for the others: filled at import */

static void
fill_hex_digits(void)
{
    for (int c = 0; c < 256; c++) {
        hex_digits[c] = c >= '0' && c <= '9' ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                : -1;
    }
}

static int
hex_value(char c)
{
    return hex_digits[(unsigned char)c];
}

enum { HEX_ID, HEX_NONE, HEX_UNSURE };

/* ids._hex_bytes(text.rjust(pad, "0"), size) for text made only of hex digits (HEX_ID: the id in
   out, HEX_NONE: it is None); HEX_UNSURE for any other text, where str.strip() and bytes.fromhex()
   have their say: the Python twin's to read. ``pad`` 0: no padding. */
static int
hex_id(const char *text, Py_ssize_t size, Py_ssize_t pad, uint8_t *out, Py_ssize_t id_size)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        if (hex_value(text[i]) < 0) {
            return HEX_UNSURE;
        }
    }
    Py_ssize_t padding = pad > size ? pad - size : 0;
    if (size + padding != 2 * id_size) {
        return HEX_NONE;
    }
    int nonzero = 0;
    for (Py_ssize_t i = 0; i < id_size; i++) {
        Py_ssize_t hi = 2 * i - padding, lo = hi + 1;
        int value = (hi >= 0 ? hex_value(text[hi]) << 4 : 0) | (lo >= 0 ? hex_value(text[lo]) : 0);
        out[i] = (uint8_t)value;
        nonzero |= value;
    }
    return nonzero ? HEX_ID : HEX_NONE;
}

static PyObject *str_traceparent, *str_b3_trace, *str_b3_span, *str_b3, *empty_bytes;

/* A header's value as UTF-8; *size -1 when absent or empty (falsy). NULL: not a str (UNSURE). */
static const char *
header(PyObject *headers, PyObject *name, Py_ssize_t *size, int *unsure)
{
    *size = -1;
    PyObject *value = PyDict_GetItemWithError(headers, name);
    if (value == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            *unsure = 1;
        }
        return NULL;
    }
    if (!PyUnicode_CheckExact(value)) {
        *unsure = 1;
        return NULL;
    }
    const char *text = PyUnicode_AsUTF8AndSize(value, size);
    if (text == NULL) {
        PyErr_Clear();
        *unsure = 1;
        *size = -1;
        return NULL;
    }
    if (*size == 0) {
        *size = -1;
    }
    return text;
}

static PyObject *
pair(const uint8_t *trace_id, const uint8_t *parent, Py_ssize_t parent_size)
{
    PyObject *trace = PyBytes_FromStringAndSize((const char *)trace_id, 16);
    PyObject *span = parent_size ? PyBytes_FromStringAndSize((const char *)parent, parent_size)
                                 : Py_NewRef(empty_bytes);
    PyObject *out = trace && span ? PyTuple_Pack(2, trace, span) : NULL;
    Py_XDECREF(trace);
    Py_XDECREF(span);
    return out;
}

enum { CONTEXT_ERROR = -1, CONTEXT_UNSURE = 0, CONTEXT_FOUND = 1 };

/* ids.trace_context_python's answer into trace_id and parent (*parent_size 8, or 0 for none), with
   the connection's name already UTF-8; CONTEXT_UNSURE where a value out of the ordinary (not only
   hex digits where hex is read, not a str, another Mapping) leaves it to that function. */
static int
read_trace_context(PyObject *headers, PyObject *request_id_text, const char *connection,
                   Py_ssize_t connection_size, uint8_t *trace_id, uint8_t *parent, Py_ssize_t *parent_size)
{
    int unsure = 0;
    *parent_size = 0;
    if (headers != Py_None && !PyDict_CheckExact(headers)) {
        return CONTEXT_UNSURE; /* another Mapping: the Python twin reads it */
    }
    if (headers != Py_None && PyDict_GET_SIZE(headers)) {
        Py_ssize_t size;
        const char *text = header(headers, str_traceparent, &size, &unsure);
        if (unsure) {
            return CONTEXT_UNSURE;
        }
        if (size > 0) {
            /* version-trace-parent-flags: the second and third of at least four parts */
            const char *dash[3];
            int dashes = 0;
            for (Py_ssize_t i = 0; i < size && dashes < 3; i++) {
                if (text[i] == '-') {
                    dash[dashes++] = text + i;
                }
            }
            if (dashes == 3) {
                int trace = hex_id(dash[0] + 1, dash[1] - dash[0] - 1, 0, trace_id, 16);
                int span = hex_id(dash[1] + 1, dash[2] - dash[1] - 1, 0, parent, 8);
                if (trace == HEX_UNSURE || span == HEX_UNSURE) {
                    return CONTEXT_UNSURE;
                }
                if (trace == HEX_ID && span == HEX_ID) {
                    *parent_size = 8;
                    return CONTEXT_FOUND;
                }
            }
        }
        text = header(headers, str_b3_trace, &size, &unsure);
        if (unsure) {
            return CONTEXT_UNSURE;
        }
        if (size > 0) {
            int trace = hex_id(text, size, 32, trace_id, 16);
            if (trace == HEX_UNSURE) {
                return CONTEXT_UNSURE;
            }
            if (trace == HEX_ID) {
                text = header(headers, str_b3_span, &size, &unsure);
                int span = unsure ? HEX_UNSURE : size > 0 ? hex_id(text, size, 0, parent, 8) : HEX_NONE;
                if (span == HEX_UNSURE) {
                    return CONTEXT_UNSURE;
                }
                *parent_size = span == HEX_ID ? 8 : 0;
                return CONTEXT_FOUND;
            }
        }
        text = header(headers, str_b3, &size, &unsure);
        if (unsure) {
            return CONTEXT_UNSURE;
        }
        const char *first_dash = size > 0 ? memchr(text, '-', size) : NULL;
        if (first_dash != NULL) {
            const char *second_dash = memchr(first_dash + 1, '-', text + size - first_dash - 1);
            const char *span_end = second_dash ? second_dash : text + size;
            int trace = hex_id(text, first_dash - text, 32, trace_id, 16);
            if (trace == HEX_UNSURE) {
                return CONTEXT_UNSURE;
            }
            if (trace == HEX_ID) {
                int span = hex_id(first_dash + 1, span_end - first_dash - 1, 0, parent, 8);
                if (span == HEX_UNSURE) {
                    return CONTEXT_UNSURE;
                }
                *parent_size = span == HEX_ID ? 8 : 0;
                return CONTEXT_FOUND;
            }
        }
    }
    if (!PyUnicode_CheckExact(request_id_text)) {
        return CONTEXT_UNSURE;
    }
    Py_ssize_t size;
    const char *request_id = PyUnicode_AsUTF8AndSize(request_id_text, &size);
    if (request_id == NULL) {
        PyErr_Clear();
        return CONTEXT_UNSURE;
    }
    if (size) {
        /* a UUID is the 128 bits themselves (dashes removed), anything else is hashed */
        char digits[32];
        Py_ssize_t n = 0;
        int only_hex = 1, printable = 1;
        for (Py_ssize_t i = 0; i < size; i++) {
            char c = request_id[i];
            if (c == '-') {
                continue;
            }
            if (hex_value(c) < 0) {
                only_hex = 0;
            }
            if ((unsigned char)c <= 0x20 || (unsigned char)c >= 0x7f) {
                printable = 0; /* whitespace str.strip() removes, or a character of more bytes */
            }
            if (n < 32) {
                digits[n] = c;
            }
            n++;
        }
        if (only_hex) {
            if (n == 32 && hex_id(digits, 32, 0, trace_id, 16) == HEX_ID) {
                return CONTEXT_FOUND;
            }
        }
        else if (!printable || n == 32) {
            return CONTEXT_UNSURE; /* strip() or fromhex() decide: the Python twin's */
        }
        digest16(request_id, size, NULL, 0, trace_id);
        return CONTEXT_FOUND;
    }
    /* Both ends see the connection; not the time (each side's clock and start differ). */
    digest16("connection", 10, connection, connection_size, trace_id);
    return CONTEXT_FOUND;
}

/* trace_context(headers, request_id, connection) -> (trace id, parent span id) | None:
   ids.trace_context_python's answer, or None where read_trace_context leaves it to that function. */
static PyObject *
trace_context(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "trace_context(headers, request_id, connection)");
        return NULL;
    }
    if (!PyUnicode_CheckExact(args[2])) {
        Py_RETURN_NONE;
    }
    Py_ssize_t connection_size;
    const char *connection = PyUnicode_AsUTF8AndSize(args[2], &connection_size);
    if (connection == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint8_t trace_id[16], parent[8];
    Py_ssize_t parent_size;
    if (read_trace_context(args[0], args[1], connection, connection_size, trace_id, parent, &parent_size) !=
        CONTEXT_FOUND) {
        Py_RETURN_NONE;
    }
    return pair(trace_id, parent, parent_size);
}

/* ---- wire.py ------------------------------------------------------------------------------------- */

static uint8_t *
varint(uint8_t *p, uint64_t value)
{
    while (value >= 0x80) {
        *p++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *p++ = (uint8_t)value;
    return p;
}

static int
varint_size(uint64_t value)
{
    int n = 1;
    while (value >= 0x80) {
        value >>= 7;
        n++;
    }
    return n;
}

static uint8_t *
fixed64(uint8_t *p, uint64_t value)
{
    for (int i = 0; i < 8; i++) {
        *p++ = (uint8_t)(value >> (8 * i));
    }
    return p;
}

/* A span attribute of the call's own (wire.string_attribute, wire.int_attribute): its value a
   string in up to four pieces, or an int (a negative one as its two's complement). */
typedef struct {
    const char *name; /* ASCII */
    Py_ssize_t name_size;
    int is_int;
    uint64_t number;
    int pieces;
    const char *piece[4];
    Py_ssize_t piece_size[4];
} Attribute;

static Py_ssize_t
text_size(const Attribute *a)
{
    Py_ssize_t size = 0;
    for (int i = 0; i < a->pieces; i++) {
        size += a->piece_size[i];
    }
    return size;
}

static Py_ssize_t
any_value_size(const Attribute *a) /* AnyValue: string_value = 1, int_value = 3 */
{
    Py_ssize_t text = text_size(a);
    return a->is_int ? 1 + varint_size(a->number) : 1 + varint_size(text) + text;
}

static Py_ssize_t
key_value_size(const Attribute *a) /* KeyValue: key = 1, value = 2 */
{
    Py_ssize_t value = any_value_size(a);
    return 1 + varint_size(a->name_size) + a->name_size + 1 + varint_size(value) + value;
}

static Py_ssize_t
attribute_size(const Attribute *a)
{
    Py_ssize_t key_value = key_value_size(a);
    return 1 + varint_size(key_value) + key_value;
}

static uint8_t *
write_attribute(uint8_t *p, const Attribute *a)
{
    *p++ = 0x4a; /* Span.attributes = 9 */
    p = varint(p, key_value_size(a));
    *p++ = 0x0a; /* KeyValue.key = 1 */
    p = varint(p, a->name_size);
    memcpy(p, a->name, a->name_size);
    p += a->name_size;
    *p++ = 0x12; /* KeyValue.value = 2 */
    p = varint(p, any_value_size(a));
    if (a->is_int) {
        *p++ = 0x18; /* AnyValue.int_value = 3 */
        return varint(p, a->number);
    }
    *p++ = 0x0a; /* AnyValue.string_value = 1 */
    p = varint(p, text_size(a));
    for (int i = 0; i < a->pieces; i++) {
        memcpy(p, a->piece[i], a->piece_size[i]);
        p += a->piece_size[i];
    }
    return p;
}

/* What wire.span_python joins, the attributes in two parts: the shape's, encoded, and the call's own. */
typedef struct {
    const uint8_t *trace_id, *span_id, *parent; /* 16, 8 and parent_size (0 or 8) bytes */
    Py_ssize_t parent_size;
    const char *name, *kind, *attributes;
    Py_ssize_t name_size, kind_size, attributes_size;
    uint64_t start, end;
    const Attribute *own;
    int own_count;
    const char *error;
    Py_ssize_t error_size;
} SpanParts;

static PyObject *
encode_span(const SpanParts *s)
{
    /* status: message = 2 (the error), code = 3 (ERROR), framed as field 15 */
    Py_ssize_t status_body = s->error_size ? 1 + varint_size(s->error_size) + s->error_size + 2 : 0;
    Py_ssize_t status_size = s->error_size ? 1 + varint_size(status_body) + status_body : 0;
    Py_ssize_t size = s->name_size + s->kind_size + s->attributes_size + status_size + (2 + 16 + 2 + 8 + 18) +
                      (s->parent_size ? 2 + 8 : 0);
    for (int i = 0; i < s->own_count; i++) {
        size += attribute_size(&s->own[i]);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + varint_size(size) + size);
    if (out == NULL) {
        return NULL;
    }
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    *p++ = 0x12; /* ScopeSpans.spans = 2 */
    p = varint(p, size);
    *p++ = 0x0a; /* trace_id = 1 */
    *p++ = 16;
    memcpy(p, s->trace_id, 16);
    p += 16;
    *p++ = 0x12; /* span_id = 2 */
    *p++ = 8;
    memcpy(p, s->span_id, 8);
    p += 8;
    if (s->parent_size) {
        *p++ = 0x22; /* parent_span_id = 4 */
        *p++ = 8;
        memcpy(p, s->parent, 8);
        p += 8;
    }
    memcpy(p, s->name, s->name_size);
    p += s->name_size;
    memcpy(p, s->kind, s->kind_size);
    p += s->kind_size;
    *p++ = 0x39; /* start_time_unix_nano = 7, fixed64 */
    p = fixed64(p, s->start);
    *p++ = 0x41; /* end_time_unix_nano = 8, fixed64 */
    p = fixed64(p, s->end);
    memcpy(p, s->attributes, s->attributes_size);
    p += s->attributes_size;
    for (int i = 0; i < s->own_count; i++) {
        p = write_attribute(p, &s->own[i]);
    }
    if (s->error_size) {
        *p++ = 0x7a; /* status = 15 */
        p = varint(p, status_body);
        *p++ = 0x12; /* Status.message = 2 */
        p = varint(p, s->error_size);
        memcpy(p, s->error, s->error_size);
        p += s->error_size;
        *p++ = 0x18; /* Status.code = 3: STATUS_CODE_ERROR */
        *p++ = 0x02;
    }
    return out;
}

/* span(trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, error) -> bytes:
   wire.span_python. */
static PyObject *
span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "span() takes 9 arguments");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "span(): ids, name and kind are bytes");
            return NULL;
        }
    }
    if (!PyBytes_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "span(): attributes are bytes");
        return NULL;
    }
    SpanParts parts = {
        .trace_id = (const uint8_t *)PyBytes_AS_STRING(args[0]),
        .span_id = (const uint8_t *)PyBytes_AS_STRING(args[1]),
        .parent = (const uint8_t *)PyBytes_AS_STRING(args[2]),
        .parent_size = PyBytes_GET_SIZE(args[2]),
        .name = PyBytes_AS_STRING(args[3]),
        .name_size = PyBytes_GET_SIZE(args[3]),
        .kind = PyBytes_AS_STRING(args[4]),
        .kind_size = PyBytes_GET_SIZE(args[4]),
        .attributes = PyBytes_AS_STRING(args[7]),
        .attributes_size = PyBytes_GET_SIZE(args[7]),
    };
    if (PyBytes_GET_SIZE(args[0]) != 16 || PyBytes_GET_SIZE(args[1]) != 8 ||
        (parts.parent_size != 0 && parts.parent_size != 8)) {
        Py_RETURN_NONE; /* ids of other widths: the Python twin writes them as they are */
    }
    parts.start = PyLong_AsUnsignedLongLong(args[5]);
    if (parts.start == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE; /* struct.pack's error, from the Python twin */
    }
    parts.end = PyLong_AsUnsignedLongLong(args[6]);
    if (parts.end == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    parts.error = utf8(args[8], &parts.error_size);
    if (parts.error == NULL) {
        return NULL;
    }
    return encode_span(&parts);
}

/* string_attribute(encoded_key, value) -> bytes: wire.string_attribute_python. */
static PyObject *
string_attribute(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "string_attribute(encoded_key: bytes, value: str)");
        return NULL;
    }
    Py_ssize_t text_size, key_size = PyBytes_GET_SIZE(args[0]);
    const char *text = utf8(args[1], &text_size);
    if (text == NULL) {
        return NULL;
    }
    Py_ssize_t any_value = 1 + varint_size(text_size) + text_size; /* AnyValue.string_value = 1 */
    Py_ssize_t key_value = key_size + 1 + varint_size(any_value) + any_value;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 1 + varint_size(key_value) + key_value);
    if (out == NULL) {
        return NULL;
    }
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    *p++ = 0x4a; /* Span.attributes = 9 */
    p = varint(p, key_value);
    memcpy(p, PyBytes_AS_STRING(args[0]), key_size);
    p += key_size;
    *p++ = 0x12; /* KeyValue.value = 2 */
    p = varint(p, any_value);
    *p++ = 0x0a;
    p = varint(p, text_size);
    memcpy(p, text, text_size);
    return out;
}

/* blake2b(data, digest_size) -> bytes: for the tests, against hashlib. */
static PyObject *
blake2b(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t digest_size;
    if (nargs != 2 || !PyBytes_Check(args[0]) || (digest_size = PyLong_AsSsize_t(args[1])) < 1 ||
        digest_size > 64) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "blake2b(data: bytes, digest_size: 1 to 64)");
        }
        return NULL;
    }
    Blake2b s;
    uint8_t digest[64];
    blake2b_init(&s, (size_t)digest_size);
    blake2b_update(&s, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]));
    blake2b_final(&s, digest);
    return PyBytes_FromStringAndSize((const char *)digest, digest_size);
}

/* ---- the module ---------------------------------------------------------------------------------- */

/* ---- Repeats: ids.Repeats in C ---------------------------------------------------------------------

   The same counts as ids.Repeats for the same calls (tests/translation/test_native_spans.py runs
   both through the same sequences): per (trace id, kind, key) the ends recorded, in two
   generations of at most max_entries keys each. A key found only in the old generation moves
   to the new one (the Python class puts it there too, and looks there first). A generation's
   keys and counts live in one arena, so it is dropped at once; its table holds a hash and a
   pointer per slot. Keys come from traffic (paths, request ids), so the hash is SipHash-1-3
   under a key drawn at start, as Python's own dict hashes them: no sender can aim its keys at
   one slot. */

typedef struct {
    Py_ssize_t key_size, count, capacity;
    __int128 *ends; /* &first while capacity is 1 */
    __int128 first;
    uint8_t key[];
} Record;

typedef struct {
    uint64_t hash; /* 0: empty; 1: moved to the new generation */
    Record *record;
} Slot;

typedef struct Chunk {
    struct Chunk *next;
    size_t used, size;
    _Alignas(16) uint8_t data[];
} Chunk;

typedef struct {
    Slot *slots;
    size_t mask;
    Py_ssize_t keys; /* put here since the generation began */
    Chunk *chunks;
} Generation;

typedef struct {
    PyObject_HEAD
    Generation new_keys, old_keys;
    Py_ssize_t max_entries;
} Repeats;

static uint64_t sip_key[2];

#define SIP_ROUND(v0, v1, v2, v3)                                                                      \
    do {                                                                                             \
        v0 += v1;                                                                                    \
        v1 = ROTL64(v1, 13) ^ v0;                                                                    \
        v0 = ROTL64(v0, 32);                                                                         \
        v2 += v3;                                                                                    \
        v3 = ROTL64(v3, 16) ^ v2;                                                                    \
        v0 += v3;                                                                                    \
        v3 = ROTL64(v3, 21) ^ v0;                                                                    \
        v2 += v1;                                                                                    \
        v1 = ROTL64(v1, 17) ^ v2;                                                                    \
        v2 = ROTL64(v2, 32);                                                                         \
    } while (0)
#define ROTL64(x, n) (((x) << (n)) | ((x) >> (64 - (n))))

static uint64_t
siphash13(const uint8_t *data, size_t size)
{
    uint64_t v0 = sip_key[0] ^ 0x736f6d6570736575ULL, v1 = sip_key[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = sip_key[0] ^ 0x6c7967656e657261ULL, v3 = sip_key[1] ^ 0x7465646279746573ULL;
    const uint8_t *end = data + (size & ~(size_t)7);
    for (; data < end; data += 8) {
        uint64_t m = load64(data);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    uint64_t last = (uint64_t)size << 56;
    for (size_t i = 0; i < (size & 7); i++) {
        last |= (uint64_t)data[i] << (8 * i);
    }
    v3 ^= last;
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= last;
    v2 ^= 0xff;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

static int
generation_init(Generation *g, Py_ssize_t max_entries)
{
    size_t slots = 8;
    while (slots < (size_t)max_entries * 2) {
        slots *= 2;
    }
    g->slots = PyMem_Calloc(slots, sizeof(Slot));
    g->mask = slots - 1;
    g->keys = 0;
    g->chunks = NULL;
    if (g->slots == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    return 1;
}

static void
generation_free(Generation *g)
{
    if (g->slots != NULL) {
        for (size_t i = 0; i <= g->mask; i++) {
            if (g->slots[i].hash > 1 && g->slots[i].record->capacity > 1) {
                PyMem_Free(g->slots[i].record->ends);
            }
        }
        PyMem_Free(g->slots);
        g->slots = NULL;
    }
    while (g->chunks != NULL) {
        Chunk *next = g->chunks->next;
        PyMem_Free(g->chunks);
        g->chunks = next;
    }
}

/* A record of the key in the generation's arena, no ends yet. */
static Record *
new_record(Generation *g, const uint8_t *key, Py_ssize_t key_size)
{
    size_t size = (sizeof(Record) + (size_t)key_size + 15) & ~(size_t)15;
    Chunk *c = g->chunks;
    if (c == NULL || c->size - c->used < size) {
        size_t chunk_size = size > 262144 ? size : 262144;
        c = PyMem_Malloc(sizeof(Chunk) + chunk_size);
        if (c == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        c->next = g->chunks;
        c->used = 0;
        c->size = chunk_size;
        g->chunks = c;
    }
    Record *record = (Record *)(c->data + c->used);
    c->used += size;
    record->key_size = key_size;
    record->count = 0;
    record->capacity = 1;
    record->ends = &record->first;
    memcpy(record->key, key, key_size);
    return record;
}

static Slot *
generation_find(Generation *g, uint64_t hash, const uint8_t *key, Py_ssize_t key_size)
{
    for (size_t i = hash & g->mask;; i = (i + 1) & g->mask) {
        Slot *slot = &g->slots[i];
        if (slot->hash == 0) {
            return NULL;
        }
        if (slot->hash == hash && slot->record->key_size == key_size &&
            memcmp(slot->record->key, key, key_size) == 0) {
            return slot;
        }
    }
}

/* The record of a key in the new generation: found there, moved from the old one, or
   (``create``) made; NULL with no exception when absent and not ``create``. The generations turn
   first when a key must be put in a full new one. */
static Record *
record_of(Repeats *self, const uint8_t *key, Py_ssize_t key_size, int create)
{
    uint64_t hash = siphash13(key, key_size);
    hash = hash < 2 ? hash + 2 : hash;
    Slot *slot = generation_find(&self->new_keys, hash, key, key_size);
    if (slot != NULL) {
        return slot->record;
    }
    Slot *old = self->old_keys.slots != NULL ? generation_find(&self->old_keys, hash, key, key_size) : NULL;
    if (old == NULL && !create) {
        return NULL;
    }
    Record moved = {0};
    if (old != NULL) {
        moved = *old->record;
        old->hash = 1; /* gone from here: the probes past it go on */
        old->record->capacity = 1; /* its ends, if on the heap, are the new record's now */
    }
    if (self->new_keys.keys >= self->max_entries) {
        Generation fresh;
        if (!generation_init(&fresh, self->max_entries)) {
            if (moved.capacity > 1) {
                PyMem_Free(moved.ends);
            }
            return NULL;
        }
        generation_free(&self->old_keys);
        self->old_keys = self->new_keys;
        self->new_keys = fresh;
    }
    Generation *g = &self->new_keys;
    Record *record = new_record(g, key, key_size);
    if (record == NULL) {
        if (moved.capacity > 1) {
            PyMem_Free(moved.ends);
        }
        return NULL;
    }
    if (old != NULL) {
        record->count = moved.count;
        record->capacity = moved.capacity;
        record->first = moved.first;
        record->ends = moved.capacity > 1 ? moved.ends : &record->first;
    }
    size_t i = hash & g->mask;
    while (g->slots[i].hash != 0) {
        i = (i + 1) & g->mask;
    }
    g->slots[i].hash = hash;
    g->slots[i].record = record;
    g->keys++;
    return record;
}

static int
as_int128(PyObject *value, __int128 *out)
{
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a time must be an int");
        return 0;
    }
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (!overflow) {
        *out = small;
        return small != -1 || !PyErr_Occurred();
    }
    /* Past 64 bits (no time of an entry is, but an int may be): its two halves. */
    PyObject *shift = PyLong_FromLong(64), *mask = PyLong_FromUnsignedLongLong(UINT64_MAX);
    PyObject *high = shift != NULL ? PyNumber_Rshift(value, shift) : NULL;
    PyObject *low = mask != NULL ? PyNumber_And(value, mask) : NULL;
    int ok = 0;
    if (high != NULL && low != NULL) {
        long long high_bits = PyLong_AsLongLong(high); /* OverflowError past 128 bits */
        unsigned long long low_bits = PyLong_AsUnsignedLongLong(low);
        if (!PyErr_Occurred()) {
            *out = (__int128)(((unsigned __int128)(uint64_t)high_bits << 64) | low_bits);
            ok = 1;
        }
    }
    Py_XDECREF(shift);
    Py_XDECREF(mask);
    Py_XDECREF(high);
    Py_XDECREF(low);
    return ok;
}

/* The key of (trace_id, kind, key) as bytes, each of the first two after its length: in buffer,
   or (longer) in *heap, for the caller to free. */
static const uint8_t *
repeat_key(const void *trace_id, Py_ssize_t trace_size, const void *kind, Py_ssize_t kind_size, const char *text,
           Py_ssize_t text_size, uint8_t *buffer, size_t buffer_size, Py_ssize_t *size, uint8_t **heap)
{
    *heap = NULL;
    *size = 16 + trace_size + kind_size + text_size;
    uint8_t *out = buffer;
    if ((size_t)*size > buffer_size) {
        out = *heap = PyMem_Malloc(*size);
        if (out == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    uint8_t *p = out;
    int64_t sizes[2] = {trace_size, kind_size};
    memcpy(p, &sizes[0], 8);
    memcpy(p + 8, trace_id, trace_size);
    p += 8 + trace_size;
    memcpy(p, &sizes[1], 8);
    memcpy(p + 8, kind, kind_size);
    p += 8 + kind_size;
    memcpy(p, text, text_size);
    return out;
}

/* record_of() for (trace_id, kind, key). */
static Record *
record_of_key(Repeats *self, const void *trace_id, Py_ssize_t trace_size, const void *kind, Py_ssize_t kind_size,
              const char *text, Py_ssize_t text_size, int create)
{
    uint8_t buffer[512], *heap;
    Py_ssize_t size;
    const uint8_t *key =
        repeat_key(trace_id, trace_size, kind, kind_size, text, text_size, buffer, sizeof buffer, &size, &heap);
    if (key == NULL) {
        return NULL;
    }
    Record *record = record_of(self, key, size, create);
    PyMem_Free(heap);
    return record;
}

/* ids.Repeats.add: the count of earlier ends recorded under the key, this one (end) recorded; -1
   with an exception set. */
static Py_ssize_t
add_end(Repeats *self, const void *trace_id, Py_ssize_t trace_size, const void *kind, Py_ssize_t kind_size,
        const char *text, Py_ssize_t text_size, __int128 end)
{
    Record *record = record_of_key(self, trace_id, trace_size, kind, kind_size, text, text_size, 1);
    if (record == NULL) {
        return -1;
    }
    if (record->count == record->capacity) {
        Py_ssize_t capacity = record->capacity * 2;
        __int128 *ends = PyMem_Malloc(capacity * sizeof(__int128));
        if (ends == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(ends, record->ends, record->count * sizeof(__int128));
        if (record->capacity > 1) {
            PyMem_Free(record->ends);
        }
        record->ends = ends;
        record->capacity = capacity;
    }
    record->ends[record->count++] = end;
    return record->count - 1;
}

/* ids.Repeats.ended_before; -1 with an exception set. */
static Py_ssize_t
count_ended_before(Repeats *self, const void *trace_id, Py_ssize_t trace_size, const void *kind,
                   Py_ssize_t kind_size, const char *text, Py_ssize_t text_size, __int128 start)
{
    Record *record = record_of_key(self, trace_id, trace_size, kind, kind_size, text, text_size, 0);
    if (record == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_ssize_t before = 0;
    for (Py_ssize_t i = 0; i < record->count; i++) {
        before += record->ends[i] < start;
    }
    return before;
}

/* A call's (trace_id, kind, key) arguments as add_end and count_ended_before read them. */
static int
key_arguments(PyObject *const *args, const char **text, Py_ssize_t *text_size)
{
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "trace_id and kind must be bytes");
        return 0;
    }
    *text = utf8(args[2], text_size);
    return *text != NULL;
}

/* add(trace_id, kind, key, end=0) -> int: ids.Repeats.add. */
static PyObject *
repeats_add(Repeats *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "add(trace_id, kind, key, end=0)");
        return NULL;
    }
    __int128 end = 0;
    if (nargs == 4 && !as_int128(args[3], &end)) {
        return NULL;
    }
    const char *text;
    Py_ssize_t text_size;
    if (!key_arguments(args, &text, &text_size)) {
        return NULL;
    }
    Py_ssize_t count = add_end(self, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), PyBytes_AS_STRING(args[1]),
                               PyBytes_GET_SIZE(args[1]), text, text_size, end);
    return count < 0 ? NULL : PyLong_FromSsize_t(count);
}

/* ended_before(trace_id, kind, key, start) -> int: ids.Repeats.ended_before. */
static PyObject *
repeats_ended_before(Repeats *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "ended_before(trace_id, kind, key, start)");
        return NULL;
    }
    __int128 start;
    if (!as_int128(args[3], &start)) {
        return NULL;
    }
    const char *text;
    Py_ssize_t text_size;
    if (!key_arguments(args, &text, &text_size)) {
        return NULL;
    }
    Py_ssize_t before = count_ended_before(self, PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]),
                                           PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), text, text_size,
                                           start);
    return before < 0 ? NULL : PyLong_FromSsize_t(before);
}

static PyObject *
repeats_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *KEYWORDS[] = {"max_entries", NULL};
    Py_ssize_t max_entries = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|n:Repeats", KEYWORDS, &max_entries)) {
        return NULL;
    }
    if (max_entries < 1 || max_entries > ((Py_ssize_t)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "max_entries must be at least 1");
        return NULL;
    }
    Repeats *self = (Repeats *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->max_entries = max_entries;
    if (!generation_init(&self->new_keys, max_entries)) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self; /* the old generation: none yet (its slots NULL) */
}

static void
repeats_dealloc(Repeats *self)
{
    generation_free(&self->new_keys);
    generation_free(&self->old_keys);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef REPEATS_METHODS[] = {
    {"add", (PyCFunction)(void (*)(void))repeats_add, METH_FASTCALL,
     "add(trace_id, kind, key, end=0) -> int: how many earlier entries had this trace and key"},
    {"ended_before", (PyCFunction)(void (*)(void))repeats_ended_before, METH_FASTCALL,
     "ended_before(trace_id, kind, key, start) -> int: how many recorded ones ended before start"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject REPEATS_TYPE = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "als2otel.translation._spans.Repeats",
    .tp_basicsize = sizeof(Repeats),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ids.Repeats in C: repeat counts per (trace, kind, key), two generations of keys",
    .tp_new = repeats_new,
    .tp_dealloc = (destructor)repeats_dealloc,
    .tp_methods = REPEATS_METHODS,
};

/* ---- spans.py: a call's span, whole --------------------------------------------------------------- */

/* The fields of an Entry that a span reads, by name (it may be the compiled class or the Python one). */
enum {
    F_PROTOCOL,
    F_UPSTREAM_LOCAL,
    F_UPSTREAM_REMOTE,
    F_DOWNSTREAM_DIRECT_REMOTE,
    F_DOWNSTREAM_REMOTE,
    F_DOWNSTREAM_LOCAL,
    F_REQUEST_HEADERS,
    F_REQUEST_ID,
    F_METHOD,
    F_PATH,
    F_SCHEME,
    F_AUTHORITY,
    F_RECEIVED_BYTES,
    F_SENT_BYTES,
    ENTRY_FIELDS,
};
static const char *const ENTRY_FIELD_NAMES[ENTRY_FIELDS] = {
    "protocol", "upstream_local", "upstream_remote", "downstream_direct_remote", "downstream_remote",
    "downstream_local", "request_headers", "request_id", "method", "path", "scheme", "authority",
    "received_bytes", "sent_bytes",
};
static PyObject *entry_fields[ENTRY_FIELDS];

/* An entry's fields as read, each at most once (NULL: not read yet). */
typedef struct {
    PyObject *entry;
    PyObject *value[ENTRY_FIELDS];
} Fields;

static PyObject * /* borrowed from fields; NULL with an exception set */
field(Fields *fields, int which)
{
    if (fields->value[which] == NULL) {
        fields->value[which] = PyObject_GetAttr(fields->entry, entry_fields[which]);
    }
    return fields->value[which];
}

/* A str field's UTF-8; 0 where it is not an exact str or not UTF-8 (no exception: the twin's). */
static int
text_of(PyObject *value, const char **text, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(value)) {
        return 0;
    }
    *text = PyUnicode_AsUTF8AndSize(value, size);
    if (*text == NULL) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* An int that int_attribute writes as at most ten bytes: -2**63 to 2**64 - 1, negatives as their
   two's complement; 0 for anything else (no exception). */
static int
varint_int(PyObject *value, uint64_t *out)
{
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (!overflow) {
        *out = (uint64_t)small;
        return 1;
    }
    if (overflow > 0) {
        unsigned long long large = PyLong_AsUnsignedLongLong(value);
        if (!(large == (unsigned long long)-1 && PyErr_Occurred())) {
            *out = large;
            return 1;
        }
    }
    PyErr_Clear();
    return 0;
}

/* A SocketAddr (ip, port) or None, as ids.connection_key and the span's attributes read it. */
typedef struct {
    int present;
    const char *ip;
    Py_ssize_t ip_size;
    long long port;
} Address;

static int /* 0: not a (str, int) pair, nor None: the twin's */
address_of(PyObject *value, Address *out)
{
    out->present = value != Py_None;
    out->ip_size = 0;
    if (!out->present) {
        return 1;
    }
    if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(value, 1)) ||
        !text_of(PyTuple_GET_ITEM(value, 0), &out->ip, &out->ip_size)) {
        return 0;
    }
    int overflow;
    out->port = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(value, 1), &overflow);
    return !overflow;
}

/* ids.connection_key(client, server) at p; the end. */
static char *
write_connection(char *p, const Address *client, const Address *server)
{
    if (client->present) {
        memcpy(p, client->ip, client->ip_size);
        p += client->ip_size;
        *p++ = ':';
        p = write_decimal(p, client->port);
        *p++ = '>';
    }
    else {
        memcpy(p, ":0>", 3);
        p += 3;
    }
    if (server->present) {
        memcpy(p, server->ip, server->ip_size);
        p += server->ip_size;
        *p++ = ':';
        p = write_decimal(p, server->port);
    }
    return p;
}

static const char KIND_CLIENT[] = "\x1f" "client\x1f", KIND_SERVER[] = "\x1f" "server\x1f", KIND_HOP[] = "\x1fhop\x1f";
/* ids.CLIENT, ids.SERVER, ids.HOP; span kinds CLIENT (3) and SERVER (2) as wire.span_kind writes them */
static const char SPAN_KIND_CLIENT[] = "\x30\x03", SPAN_KIND_SERVER[] = "\x30\x02";

static void
text_attribute(Attribute *a, const char *name, const char *text, Py_ssize_t size)
{
    *a = (Attribute){.name = name, .name_size = strlen(name), .pieces = 1, .piece = {text}, .piece_size = {size}};
}

static void
int_attribute(Attribute *a, const char *name, uint64_t number)
{
    *a = (Attribute){.name = name, .name_size = strlen(name), .is_int = 1, .number = number};
}

/* The attributes spans.unique_attributes writes, in its order, from the fields; 0 for the twin. */
static int
own_attributes(Fields *f, int client, const Address *peer, Attribute *own, int *count)
{
    const char *text;
    Py_ssize_t size;
    PyObject *protocol = field(f, F_PROTOCOL);
    if (protocol == NULL || !PyUnicode_CheckExact(protocol)) {
        return 0;
    }
    *count = 0;
    if (PyUnicode_CompareWithASCIIString(protocol, "tcp") == 0) {
        uint64_t received, sent;
        PyObject *received_value = field(f, F_RECEIVED_BYTES), *sent_value = field(f, F_SENT_BYTES);
        if (received_value == NULL || sent_value == NULL || !varint_int(received_value, &received) ||
            !varint_int(sent_value, &sent)) {
            return 0;
        }
        int_attribute(&own[(*count)++], "envoy.bytes_received", received);
        int_attribute(&own[(*count)++], "envoy.bytes_sent", sent);
    }
    else {
        PyObject *path = field(f, F_PATH);
        const char *path_text;
        Py_ssize_t path_size;
        if (path == NULL || !text_of(path, &path_text, &path_size)) {
            return 0;
        }
        if (client) {
            const char *scheme, *authority;
            Py_ssize_t scheme_size, authority_size;
            PyObject *scheme_value = field(f, F_SCHEME), *authority_value = field(f, F_AUTHORITY);
            if (scheme_value == NULL || authority_value == NULL || !text_of(scheme_value, &scheme, &scheme_size) ||
                !text_of(authority_value, &authority, &authority_size)) {
                return 0;
            }
            if (!scheme_size) {
                scheme = "http";
                scheme_size = 4;
            }
            own[(*count)++] = (Attribute){
                .name = "url.full",
                .name_size = 8,
                .pieces = 4,
                .piece = {scheme, "://", authority, path_text},
                .piece_size = {scheme_size, 3, authority_size, path_size},
            };
        }
        else {
            const char *question = memchr(path_text, '?', path_size);
            Py_ssize_t before = question ? question - path_text : path_size;
            text_attribute(&own[(*count)++], "url.path", path_text, before);
            if (question && path_size - before > 1) {
                text_attribute(&own[(*count)++], "url.query", question + 1, path_size - before - 1);
            }
        }
    }
    if (!client) {
        Address remote;
        PyObject *value = field(f, F_DOWNSTREAM_REMOTE);
        if (value == NULL || !address_of(value, &remote)) {
            return 0;
        }
        if (remote.present) {
            text_attribute(&own[(*count)++], "client.address", remote.ip, remote.ip_size);
        }
    }
    if (peer->present) {
        int_attribute(&own[(*count)++], "network.peer.port", (uint64_t)peer->port);
    }
    PyObject *request_id = field(f, F_REQUEST_ID);
    if (request_id == NULL || !text_of(request_id, &text, &size)) {
        return 0;
    }
    if (size) {
        text_attribute(&own[(*count)++], "envoy.request_id", text, size);
    }
    return 1;
}

/* A non-negative time that fits 63 bits (every entry's does; the twin has the others). */
static int
time_of(PyObject *value, long long *out)
{
    int overflow;
    *out = PyLong_CheckExact(value) ? PyLong_AsLongLongAndOverflow(value, &overflow) : -1;
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    return *out >= 0;
}

/* call_span(repeats, entry, client, node_id, gateway, from_outside, start, end, name, attributes, error,
   ratio) -> bytes | None: spans.call_span_python's span for one side of a call (b"" when sampling
   leaves its trace out), or None where a value out of the ordinary leaves it to that function, before
   anything is counted in repeats. */
static PyObject *
call_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "call_span() takes 12 arguments");
        return NULL;
    }
    int client = PyObject_IsTrue(args[2]), gateway = PyObject_IsTrue(args[4]);
    int from_outside = PyObject_IsTrue(args[5]);
    double ratio = PyFloat_AsDouble(args[11]);
    if (client < 0 || gateway < 0 || from_outside < 0 || (ratio == -1.0 && PyErr_Occurred())) {
        return NULL;
    }
    SpanParts parts = {.own_count = 0};
    const char *node;
    Py_ssize_t node_size;
    long long start, end;
    if (Py_TYPE(args[0]) != &REPEATS_TYPE || !PyBytes_Check(args[8]) || !PyBytes_Check(args[9]) ||
        !text_of(args[3], &node, &node_size) || !text_of(args[10], &parts.error, &parts.error_size) ||
        !time_of(args[6], &start) || !time_of(args[7], &end)) {
        Py_RETURN_NONE;
    }
    Repeats *repeats = (Repeats *)args[0];
    Fields f = {.entry = args[1]};
    PyObject *out = NULL;
    char buffer[1024], *hop = buffer, *heap = NULL;
    Address local, remote, peer;
    Attribute own[6];
    const char *method, *path;
    Py_ssize_t method_size, path_size;
    /* the connection: client (upstream_local -> upstream_remote), server (caller -> downstream_local) */
    PyObject *first = field(&f, client ? F_UPSTREAM_LOCAL : F_DOWNSTREAM_DIRECT_REMOTE);
    if (first == NULL) {
        goto done;
    }
    if (!client && first == Py_None) {
        first = field(&f, F_DOWNSTREAM_REMOTE);
        if (first == NULL) {
            goto done;
        }
    }
    PyObject *second = field(&f, client ? F_UPSTREAM_REMOTE : F_DOWNSTREAM_LOCAL);
    PyObject *method_value = field(&f, F_METHOD), *path_value = field(&f, F_PATH);
    PyObject *headers = field(&f, F_REQUEST_HEADERS), *request_id = field(&f, F_REQUEST_ID);
    if (second == NULL || method_value == NULL || path_value == NULL || headers == NULL || request_id == NULL) {
        goto done;
    }
    if (!address_of(first, &local) || !address_of(second, &remote) ||
        !text_of(method_value, &method, &method_size) || !text_of(path_value, &path, &path_size)) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    peer = client ? remote : local; /* upstream_remote, or the caller */
    if (!own_attributes(&f, client, &peer, own, &parts.own_count)) {
        out = PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    parts.own = own;
    /* the hop, "connection|method|path", the connection its start */
    size_t hop_capacity = local.ip_size + remote.ip_size + 2 * 24 + 4 + method_size + path_size;
    if (hop_capacity > sizeof buffer) {
        hop = heap = PyMem_Malloc(hop_capacity);
        if (heap == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    char *p = write_connection(hop, &local, &remote);
    Py_ssize_t connection_size = p - hop;
    *p++ = '|';
    memcpy(p, method, method_size);
    p += method_size;
    *p++ = '|';
    memcpy(p, path, path_size);
    p += path_size;
    Py_ssize_t hop_size = p - hop;

    uint8_t trace_id[16], span_id[8], parent[8];
    int context = read_trace_context(headers, request_id, hop, connection_size, trace_id, parent, &parts.parent_size);
    if (context != CONTEXT_FOUND) {
        out = context == CONTEXT_ERROR ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    if (ratio < 1.0) { /* ids.sampled; not at all for NaN, as `ratio < 1.0` there */
        int kept = 0;
        if (ratio > 0.0) {
            Blake2b s;
            uint8_t digest[8];
            blake2b_init(&s, 8);
            blake2b_update(&s, trace_id, 16);
            blake2b_final(&s, digest);
            uint64_t draw = 0;
            for (int i = 0; i < 8; i++) {
                draw = draw << 8 | digest[i];
            }
            kept = draw < (uint64_t)(ratio * 18446744073709551616.0);
        }
        if (!kept) {
            out = Py_NewRef(empty_bytes);
            goto done;
        }
    }
    if (client) {
        Py_ssize_t n = add_end(repeats, trace_id, 16, KIND_CLIENT, 8, hop, hop_size, 0);
        if (n < 0) {
            goto done;
        }
        span_id_of(trace_id, 16, KIND_CLIENT, 8, hop, hop_size, n, span_id);
        /* Under the app's own span when it propagated one, else under this proxy's server side. */
        if (!parts.parent_size || gateway) {
            Py_ssize_t before = count_ended_before(repeats, trace_id, 16, KIND_SERVER, 8, node, node_size, start);
            if (before < 0) {
                goto done;
            }
            span_id_of(trace_id, 16, KIND_SERVER, 8, node, node_size, before, parent);
            parts.parent_size = 8;
        }
        parts.kind = SPAN_KIND_CLIENT;
    }
    else {
        Py_ssize_t n = add_end(repeats, trace_id, 16, KIND_SERVER, 8, node, node_size, end);
        if (n < 0) {
            goto done;
        }
        span_id_of(trace_id, 16, KIND_SERVER, 8, node, node_size, n, span_id);
        if (!from_outside) {
            Py_ssize_t hops = add_end(repeats, trace_id, 16, KIND_HOP, 5, hop, hop_size, 0);
            if (hops < 0) {
                goto done;
            }
            span_id_of(trace_id, 16, KIND_CLIENT, 8, hop, hop_size, hops, parent);
            parts.parent_size = 8;
        }
        parts.kind = SPAN_KIND_SERVER;
    }
    parts.kind_size = 2;
    parts.trace_id = trace_id;
    parts.span_id = span_id;
    parts.parent = parent;
    parts.name = PyBytes_AS_STRING(args[8]);
    parts.name_size = PyBytes_GET_SIZE(args[8]);
    parts.attributes = PyBytes_AS_STRING(args[9]);
    parts.attributes_size = PyBytes_GET_SIZE(args[9]);
    parts.start = (uint64_t)start;
    parts.end = (uint64_t)end;
    out = encode_span(&parts);
done:
    PyMem_Free(heap);
    for (int i = 0; i < ENTRY_FIELDS; i++) {
        Py_XDECREF(f.value[i]);
    }
    return out;
}

static PyMethodDef METHODS[] = {
    {"span_id", (PyCFunction)(void (*)(void))span_id, METH_FASTCALL,
     "span_id(trace_id, kind, key, repeat) -> bytes: ids.span_id_python"},
    {"trace_context", (PyCFunction)(void (*)(void))trace_context, METH_FASTCALL,
     "trace_context(headers, request_id, connection) -> (trace id, parent) | None for the Python twin"},
    {"span", (PyCFunction)(void (*)(void))span, METH_FASTCALL,
     "span(trace_id, span_id, parent, name, kind, start, end, attributes, error) -> bytes | None"},
    {"string_attribute", (PyCFunction)(void (*)(void))string_attribute, METH_FASTCALL,
     "string_attribute(encoded_key, value) -> bytes: wire.string_attribute_python"},
    {"call_span", (PyCFunction)(void (*)(void))call_span, METH_FASTCALL,
     "call_span(repeats, entry, client, node_id, gateway, from_outside, start, end, name, attributes, error, "
     "ratio) -> bytes | None for the Python twin: spans.call_span_python"},
    {"blake2b", (PyCFunction)(void (*)(void))blake2b, METH_FASTCALL, "blake2b(data, digest_size) -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_spans", "Trace context, span ids and spans natively (ids.py and wire.py hold the twins)",
    -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__spans(void)
{
    if (str_traceparent == NULL) {
        fill_hex_digits();
        if ((str_traceparent = PyUnicode_InternFromString("traceparent")) == NULL ||
            (str_b3_trace = PyUnicode_InternFromString("x-b3-traceid")) == NULL ||
            (str_b3_span = PyUnicode_InternFromString("x-b3-spanid")) == NULL ||
            (str_b3 = PyUnicode_InternFromString("b3")) == NULL ||
            (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
            return NULL;
        }
        for (int i = 0; i < ENTRY_FIELDS; i++) {
            if ((entry_fields[i] = PyUnicode_InternFromString(ENTRY_FIELD_NAMES[i])) == NULL) {
                return NULL;
            }
        }
    }
    if (PyType_Ready(&REPEATS_TYPE) < 0) {
        return NULL;
    }
    PyObject *os = PyImport_ImportModule("os");
    PyObject *random = os != NULL ? PyObject_CallMethod(os, "urandom", "i", 16) : NULL;
    Py_XDECREF(os);
    if (random == NULL || !PyBytes_Check(random) || PyBytes_GET_SIZE(random) != 16) {
        Py_XDECREF(random);
        return NULL;
    }
    memcpy(sip_key, PyBytes_AS_STRING(random), 16);
    Py_DECREF(random);
    PyObject *module = PyModule_Create(&MODULE);
    if (module != NULL && PyModule_AddObjectRef(module, "Repeats", (PyObject *)&REPEATS_TYPE) < 0) {
        Py_CLEAR(module);
    }
    return module;
}
