/* Envoy's encoded HTTP and TCP access-log entries into Entry objects, read straight from their bytes.

   The native twin of normalize.py's Python path (normalize_http, normalize_tcp, AddressCache),
   which stays the definition: for every entry this returns either the Entry the Python path
   gives, field for field, or None, and then the caller takes the Python path. None is the
   answer to everything out of the ordinary (a field set twice, a group, a string that is not
   UTF-8, an intermediate entry, a time or duration the Python path refuses or that would not
   fit 64 bits, ...): the Python path then raises the same InvalidEntry or IntermediateEntry it
   always did, so the rules for bad input live in one place. What is ordinary, every final
   entry Envoy sends, is read here without a Python object per field: one pass over the bytes,
   offsets into them kept in C structures, and Python objects made only for the values an
   Entry holds.

   Every read is checked against the end of its buffer before it happens (tests/receiver/
   test_native.py runs the fuzz corpus and hostile entries through both paths and compares;
   the README says how it was run under AddressSanitizer). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* Set once by configure(): the types an Entry is made of, and the Python path's tables. */
static PyObject *entry_type, *socket_addr_type, *any_value_type;
static PyObject *str_http, *str_grpc, *str_tcp, *str_empty, *str_addresses, *str_decode, *str_max;
static PyObject *str_content_type, *str_application_grpc;
static PyObject *methods[10], *http_versions[5];
static PyObject *flag_codes[28]; /* ResponseFlags field number -> Envoy's short code */
static PyObject *address_names[5];

#define ENTRY_FIELDS 30
/* How an Entry is made: its type's tp_new, then each field stored through the type's own
   descriptor (a compiled class's getset, a slotted class's member), as the dataclass's __init__
   assigns them, without parsing thirty arguments; NULL setters: by calling the type. */
static setter field_setters[ENTRY_FIELDS];
static void *field_closures[ENTRY_FIELDS];
static PyMemberDef *field_members[ENTRY_FIELDS];
static PyObject *no_arguments;
static const char *FIELD_NAMES[ENTRY_FIELDS] = {
    "api_version", "protocol", "start_ns", "downstream_end_ns", "first_upstream_tx_ns",
    "last_upstream_rx_ns", "downstream_remote", "downstream_direct_remote", "downstream_local",
    "upstream_remote", "upstream_local", "upstream_cluster", "route_name", "response_flags",
    "mtls", "peer_principal", "filter_state", "method", "scheme", "authority", "path",
    "user_agent", "request_id", "http_version", "response_code", "grpc_status",
    "request_headers", "response_headers", "received_bytes", "sent_bytes",
};

static const int64_t NS = 1000000000LL;
static const int64_t MAX_DURATION_NS = 366LL * 24 * 3600 * 1000000000LL;
static const int64_t MAX_SECONDS = 4000000000LL; /* year 2096: beyond it the Python path decides */

/* ---- the wire format ------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} Reader;

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
} Span; /* a length-delimited value inside the entry's bytes; data NULL: absent */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* One varint; 0 when the bytes end first or it runs past ten bytes. */
static int
read_varint(Reader *r, uint64_t *out)
{
    if (r->p < r->end && *r->p < 0x80) { /* one byte: nearly every tag and length */
        *out = *r->p++;
        return 1;
    }
    uint64_t value = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) {
            return 0;
        }
        uint8_t byte = *r->p++;
        if (shift == 63 && byte > 1) {
            return 0; /* past 64 bits: the Python path decides */
        }
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* The next field's number, wire type and, for WT_LEN, its bytes; for WT_VARINT its value.
   0 at the end of the reader (ok set to 1) or on anything unusual (ok set to 0). */
typedef struct {
    uint32_t number;
    int wire_type;
    uint64_t varint;
    Span bytes;
} Field;

static int
next_field(Reader *r, Field *f, int *ok)
{
    *ok = 1;
    if (r->p >= r->end) {
        return 0;
    }
    *ok = 0;
    uint64_t tag;
    if (!read_varint(r, &tag) || tag > 0xFFFFFFFFULL) {
        return 0;
    }
    f->number = (uint32_t)(tag >> 3);
    f->wire_type = (int)(tag & 7);
    if (f->number == 0 || f->number > 536870911U) {
        return 0;
    }
    switch (f->wire_type) {
    case WT_VARINT:
        if (!read_varint(r, &f->varint)) {
            return 0;
        }
        break;
    case WT_I64:
        if (r->end - r->p < 8) {
            return 0;
        }
        r->p += 8;
        break;
    case WT_I32:
        if (r->end - r->p < 4) {
            return 0;
        }
        r->p += 4;
        break;
    case WT_LEN: {
        uint64_t size;
        if (!read_varint(r, &size) || size > (uint64_t)(r->end - r->p)) {
            return 0;
        }
        f->bytes.data = r->p;
        f->bytes.size = (Py_ssize_t)size;
        r->p += size;
        break;
    }
    default: /* groups and the wire types that do not exist */
        return 0;
    }
    *ok = 1;
    return 1;
}

static Reader
reader_of(Span s)
{
    Reader r = {s.data, s.data + s.size};
    return r;
}

/* Each declared field once: a second occurrence (a sub-message to merge, a value to replace)
   goes to the Python path. Bit n for field n (fields up to 63). */
static int
first_time(uint64_t *seen, uint32_t number)
{
    uint64_t bit = 1ULL << (number & 63);
    if (*seen & bit) {
        return 0;
    }
    *seen |= bit;
    return 1;
}

/* Declares the reader of a message's fields and loops over them: `f` the field, `ok` (after
   the loop) whether the message ended cleanly, `seen` the declared fields met so far. */
#define FOR_EACH_FIELD(span)                                                                   \
    Reader r = reader_of(span);                                                                 \
    Field f;                                                                                    \
    int ok;                                                                                     \
    uint64_t seen = 0;                                                                          \
    (void)seen;                                                                                 \
    while (next_field(&r, &f, &ok))

#define EXPECT(field, type) \
    if ((field)->wire_type != (type) || !first_time(&seen, (field)->number)) return 0

/* google.protobuf.Timestamp or Duration as nanoseconds; 0 when out of what 64 bits hold. */
static int
read_time(Span s, int64_t *out)
{
    int64_t seconds = 0;
    int32_t nanos = 0;
    FOR_EACH_FIELD (s) {
        if (f.number == 1) {
            EXPECT(&f, WT_VARINT);
            seconds = (int64_t)f.varint;
        }
        else if (f.number == 2) {
            EXPECT(&f, WT_VARINT);
            nanos = (int32_t)(uint32_t)f.varint;
        }
    }
    if (!ok || seconds > MAX_SECONDS || seconds < -MAX_SECONDS) {
        return 0;
    }
    *out = seconds * NS + nanos;
    return 1;
}

/* ---- Python values --------------------------------------------------------------------------- */

static PyObject *
text_strict(Span s) /* a proto3 `string`: NULL with no exception when not UTF-8 */
{
    if (s.data == NULL || s.size == 0) {
        Py_INCREF(str_empty);
        return str_empty;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s.data, s.size, NULL);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
    }
    return text;
}

static PyObject *
text_lenient(Span s) /* a value Envoy copied from traffic: bytes.decode("utf-8", "replace") */
{
    if (s.data == NULL || s.size == 0) {
        Py_INCREF(str_empty);
        return str_empty;
    }
    return PyUnicode_DecodeUTF8((const char *)s.data, s.size, "replace");
}

/* Values that come again and again (clusters, routes, authorities, user agents, identities, a
   header's usual values): the string made last time for the same bytes, found in a small table by
   a hash of them, so that no new one is made and its hash is already known (the translator's
   call-shape key hashes them). The table holds at most RECENT_TEXTS strings of at most
   RECENT_TEXT_MAX bytes, whatever the traffic; a value that finds its slot taken by another is
   made anew and takes the slot. Bytes equal to a string's UTF-8 are valid UTF-8 that decode to
   that string, strictly or leniently: a string found is what decoding would have made. */
#define RECENT_TEXTS 1024
#define RECENT_TEXT_MAX 128
static PyObject *recent_texts[RECENT_TEXTS];

static size_t
recent_slot(Span s)
{
    uint64_t h = (uint64_t)s.size * 0x9E3779B97F4A7C15ULL;
    Py_ssize_t i = 0;
    for (; i + 8 <= s.size; i += 8) {
        uint64_t word;
        memcpy(&word, s.data + i, 8);
        h = (h ^ word) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    if (i < s.size) {
        uint64_t word = 0;
        memcpy(&word, s.data + i, s.size - i);
        h = (h ^ word) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    return (size_t)(h & (RECENT_TEXTS - 1));
}

/* text_strict(s), or text_lenient(s) when lenient, made at most once while it stays recent. */
static PyObject *
recent_text(Span s, int lenient)
{
    if (s.data == NULL || s.size == 0 || s.size > RECENT_TEXT_MAX) {
        return lenient ? text_lenient(s) : text_strict(s);
    }
    PyObject **slot = &recent_texts[recent_slot(s)];
    if (*slot != NULL) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(*slot, &size); /* kept with it: no failure */
        if (text != NULL && size == s.size && memcmp(text, s.data, size) == 0) {
            return Py_NewRef(*slot);
        }
    }
    PyObject *made = lenient ? text_lenient(s) : text_strict(s);
    if (made != NULL) {
        if (PyUnicode_AsUTF8AndSize(made, NULL) != NULL) { /* kept with its UTF-8, for the next match */
            Py_XSETREF(*slot, Py_NewRef(made));
        }
        else {
            PyErr_Clear(); /* a string with no UTF-8 (decoding makes none): not kept */
        }
    }
    return made;
}

/* dict[key] = value, giving up both references whatever happens; -1 on failure (a NULL value
   included, its exception set). */
static int
put(PyObject *dict, PyObject *key, PyObject *value)
{
    int result = value == NULL ? -1 : PyDict_SetItem(dict, key, value);
    Py_DECREF(key);
    Py_XDECREF(value);
    return result;
}

/* tuple.__new__(type, (first, second)) as the Python path makes a NamedTuple (SocketAddr,
   AnyValue), giving up both references; NULL on failure (a NULL argument included). */
static PyObject *
named_pair(PyObject *type, PyObject *first, PyObject *second)
{
    PyObject *pair = first && second ? PyTuple_Pack(2, first, second) : NULL;
    Py_XDECREF(first);
    Py_XDECREF(second);
    PyObject *args = pair ? PyTuple_Pack(1, pair) : NULL;
    Py_XDECREF(pair);
    PyObject *made = args ? PyTuple_Type.tp_new((PyTypeObject *)type, args, NULL) : NULL;
    Py_XDECREF(args);
    return made;
}

/* A message of two length-delimited fields, 1 and 2 (a map entry: key and value; an Any:
   type_url and value), each at most once. Any other field is the Python path's (protobuf keeps
   a map entry with one out of its map), and so is a repeated one (protobuf checks every
   occurrence of a string, not only the last). */
/* A length-delimited field with this one-byte tag next in r: its bytes (r moves past it). */
static int
take_len_field(Reader *r, uint8_t tag, Span *out)
{
    uint64_t size;
    if (r->p >= r->end || *r->p != tag) {
        return 0;
    }
    r->p++;
    if (!read_varint(r, &size) || size > (uint64_t)(r->end - r->p)) {
        return 0;
    }
    out->data = r->p;
    out->size = (Py_ssize_t)size;
    r->p += size;
    return 1;
}

static int
pair_fields(Span s, Span *first, Span *second)
{
    Reader fast = {s.data, s.data + s.size};
    if (take_len_field(&fast, 0x0a, first) && take_len_field(&fast, 0x12, second) && fast.p == fast.end) {
        return 1; /* the usual shape, field 1 then field 2, read as the loop below would */
    }
    first->data = second->data = NULL;
    first->size = second->size = 0;
    FOR_EACH_FIELD (s) {
        if (f.number != 1 && f.number != 2) {
            return 0;
        }
        EXPECT(&f, WT_LEN);
        *(f.number == 1 ? first : second) = f.bytes;
    }
    return ok;
}

/* map<string, bytes> as {name: value decoded leniently}; NULL without exception: not ours.
   Empty maps give None, as _text_map does. The last map entry named grpc-status is kept in
   *grpc_status when asked for. */
typedef struct {
    Span entries[64];
    int count;
} MapSpans;

/* Names that come again and again in the same place (logged header names, an OTLP record's
   attribute names: Envoy writes the same ones in the same order every time): the string made
   for the same bytes at the same position last time, so that no new one is made (and its hash
   is known); otherwise text_strict(key), kept for next time. */
#define RECENT_NAMES 64
typedef struct {
    PyObject *names[RECENT_NAMES];
} RecentNames;

static PyObject *
recent_name(RecentNames *recent, Py_ssize_t position, Span key)
{
    PyObject **slot = position < RECENT_NAMES ? &recent->names[position] : NULL;
    if (slot != NULL && *slot != NULL) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(*slot, &size);
        if (text != NULL && size == key.size && memcmp(text, key.data, size) == 0) {
            return Py_NewRef(*slot);
        }
        PyErr_Clear();
    }
    PyObject *name = text_strict(key);
    if (name != NULL && slot != NULL) {
        Py_XSETREF(*slot, Py_NewRef(name));
    }
    return name;
}

static PyObject *
text_map(const MapSpans *map, Span *grpc_status, RecentNames *recent)
{
    if (map->count == 0) {
        Py_RETURN_NONE;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    for (int i = 0; i < map->count; i++) {
        Span key, value;
        if (!pair_fields(map->entries[i], &key, &value)) {
            goto not_ours;
        }
        PyObject *name = recent_name(recent, i, key);
        if (name == NULL) {
            if (PyErr_Occurred()) {
                goto error;
            }
            goto not_ours;
        }
        if (grpc_status != NULL && key.size == 11 && memcmp(key.data, "grpc-status", 11) == 0) {
            *grpc_status = value;
            if (grpc_status->data == NULL) {
                grpc_status->data = (const uint8_t *)"";
            }
        }
        if (put(dict, name, recent_text(value, 1)) < 0) {
            goto error;
        }
    }
    return dict;
not_ours: /* no exception set: the caller answers None */
error:
    Py_DECREF(dict);
    return NULL;
}

/* ---- addresses --------------------------------------------------------------------------------- */

/* AddressCache._ip_socket, byte for byte: the same checks in the same order (it defines which
   encodings count as the usual one). 1 with *out set; 0 when the Python path must decode. */
static int
ip_socket(const uint8_t *e, Py_ssize_t len, PyObject **out)
{
    if (len < 4) {
        return 0;
    }
    Py_ssize_t n = e[3];
    if (e[0] != 0x0A || e[2] != 0x12 || e[1] != len - 2) {
        return 0;
    }
    Py_ssize_t ip_end = 4 + n < len ? 4 + n : len;
    const uint8_t *field = e + ip_end;
    Py_ssize_t field_len = len - ip_end;
    if (ip_end == 4 || field_len < 2 || field_len > 4 || field[0] != 0x18) {
        return 0; /* an empty ip, or a port field not of one to three bytes */
    }
    uint32_t port = 0;
    int shift = 0;
    for (Py_ssize_t i = 1; i < field_len; i++, shift += 7) {
        port |= (uint32_t)(field[i] & 0x7F) << shift;
        if (!(field[i] & 0x80)) {
            if (i != field_len - 1 || port > 0xFFFF) {
                return 0;
            }
            PyObject *ip = PyUnicode_DecodeUTF8((const char *)e + 4, ip_end - 4, NULL);
            if (ip == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    return -1;
                }
                PyErr_Clear();
                return 0;
            }
            *out = named_pair(socket_addr_type, ip, PyLong_FromUnsignedLong(port));
            return *out == NULL ? -1 : 1;
        }
    }
    return 0;
}

/* `cached(encoded) or decode(encoded, which)` of _begin: the cache's dict first, then the usual
   encoding read here and stored as AddressCache.decode stores it, else AddressCache.decode
   itself (which rotates a full cache, counting it, and raises InvalidEntry for the Python
   path's reasons). */
static PyObject *
address(PyObject *cache, PyObject *addresses, Py_ssize_t max, Span s, int which)
{
    if (s.data == NULL || s.size == 0) {
        Py_RETURN_NONE;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)s.data, s.size);
    if (key == NULL) {
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(addresses, key);
    if (found != NULL) {
        Py_DECREF(key);
        Py_INCREF(found);
        return found;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(addresses) < max) {
        PyObject *decoded = NULL;
        int got = ip_socket(s.data, s.size, &decoded);
        if (got < 0) {
            Py_DECREF(key);
            return NULL;
        }
        if (got) {
            if (PyDict_SetItem(addresses, key, decoded) < 0) {
                Py_DECREF(decoded);
                decoded = NULL;
            }
            Py_DECREF(key);
            return decoded;
        }
    }
    PyObject *decoded = PyObject_CallMethodObjArgs(cache, str_decode, key, address_names[which], NULL);
    Py_DECREF(key);
    return decoded;
}

/* ---- the entry ------------------------------------------------------------------------------- */

typedef struct {
    int64_t start_ns, first_tx, last_rx, last_downstream_tx, duration;
    Span addresses[5]; /* downstream remote, direct remote, local; upstream remote, local */
    Span upstream_cluster, route_name;
    uint32_t flags; /* bit n: ResponseFlags field n set */
    Span peer_uri;  /* the first peer SAN whose uri is set and not empty */
    MapSpans filter_state;
    /* HTTP */
    int32_t protocol_version, method;
    Span scheme, authority, path, user_agent, request_id;
    MapSpans request_headers, response_headers, response_trailers;
    int has_response_code;
    uint32_t response_code;
    /* TCP */
    uint64_t received_bytes, sent_bytes;
} Raw;

static int
add_span(MapSpans *map, Span s)
{
    if (map->count == (int)(sizeof map->entries / sizeof map->entries[0])) {
        return 0; /* more entries than we keep offsets for: the Python path */
    }
    map->entries[map->count++] = s;
    return 1;
}

static int
read_response_flags(Span s, uint32_t *flags)
{
    FOR_EACH_FIELD (s) {
        if (f.number == 13) { /* unauthorized_details: set when present, whatever it holds */
            EXPECT(&f, WT_LEN);
            Reader inner = reader_of(f.bytes);
            Field g;
            uint64_t inner_seen = 0;
            while (next_field(&inner, &g, &ok)) {
                if (g.number == 1 && (g.wire_type != WT_VARINT || !first_time(&inner_seen, 1))) {
                    return 0;
                }
            }
            if (!ok) {
                return 0;
            }
            *flags |= 1U << 13;
        }
        else if (f.number >= 1 && f.number <= 27) {
            EXPECT(&f, WT_VARINT);
            if (f.varint) {
                *flags |= 1U << f.number;
            }
        }
    }
    return ok;
}

/* CertificateProperties: its SANs checked; for the peer's, the first uri that is set. */
static int
read_certificate(Span s, Span *first_uri)
{
    FOR_EACH_FIELD (s) {
        if (f.number != 1) {
            continue;
        }
        if (f.wire_type != WT_LEN) {
            return 0;
        }
        Reader san = reader_of(f.bytes);
        Field g;
        Span uri = {NULL, 0};
        int last = 0; /* the oneof's member set last: 1 uri, 2 dns */
        while (next_field(&san, &g, &ok)) {
            if (g.number == 1 || g.number == 2) {
                if (g.wire_type != WT_LEN) {
                    return 0;
                }
                last = (int)g.number;
                if (g.number == 1) {
                    uri = g.bytes;
                }
            }
        }
        if (!ok) {
            return 0;
        }
        if (first_uri != NULL && first_uri->data == NULL && last == 1 && uri.size > 0) {
            *first_uri = uri;
        }
    }
    return ok;
}

static int
read_tls(Span s, Raw *raw)
{
    FOR_EACH_FIELD (s) {
        if (f.number == 4 || f.number == 5) {
            EXPECT(&f, WT_LEN);
            if (!read_certificate(f.bytes, f.number == 5 ? &raw->peer_uri : NULL)) {
                return 0;
            }
        }
    }
    return ok;
}

static int
read_common(Span s, Raw *raw)
{
    int intermediate = 0;
    int32_t log_type = 0;
    FOR_EACH_FIELD (s) {
        switch (f.number) {
        case 1: /* sample_rate */
            EXPECT(&f, WT_I64);
            break;
        case 2:
        case 3:
        case 13:
        case 14:
        case 20:
            EXPECT(&f, WT_LEN);
            raw->addresses[f.number == 2 ? 0 : f.number == 20 ? 1 : f.number == 3 ? 2 : f.number == 13 ? 3 : 4] =
                f.bytes;
            break;
        case 4:
            EXPECT(&f, WT_LEN);
            if (!read_tls(f.bytes, raw)) {
                return 0;
            }
            break;
        case 5:
        case 6:
        case 7:
        case 8:
        case 9:
        case 10:
        case 11:
        case 12:
        case 23: {
            EXPECT(&f, WT_LEN);
            int64_t value;
            if (!read_time(f.bytes, &value)) {
                return 0;
            }
            if (f.number == 5) {
                raw->start_ns = value;
            }
            else if (f.number == 7) {
                raw->first_tx = value;
            }
            else if (f.number == 10) {
                raw->last_rx = value;
            }
            else if (f.number == 12) {
                raw->last_downstream_tx = value;
            }
            else if (f.number == 23) {
                raw->duration = value;
            }
            break;
        }
        case 15:
            EXPECT(&f, WT_LEN);
            raw->upstream_cluster = f.bytes;
            break;
        case 16:
            EXPECT(&f, WT_LEN);
            if (!read_response_flags(f.bytes, &raw->flags)) {
                return 0;
            }
            break;
        case 19:
            EXPECT(&f, WT_LEN);
            raw->route_name = f.bytes;
            break;
        case 21:
            if (f.wire_type != WT_LEN || !add_span(&raw->filter_state, f.bytes)) {
                return 0;
            }
            break;
        case 27:
            EXPECT(&f, WT_VARINT);
            intermediate = f.varint != 0;
            break;
        case 33:
            EXPECT(&f, WT_VARINT);
            log_type = (int32_t)(uint32_t)f.varint;
            break;
        default:
            break; /* a field of Envoy's that analysis does not read */
        }
    }
    /* Intermediate entries, and NotSet/TcpConnectionEnd/DownstreamEnd/UdpSessionEnd only. */
    return ok && !intermediate && (log_type == 0 || log_type == 3 || log_type == 6 || log_type == 13);
}

static int
read_request(Span s, Raw *raw)
{
    FOR_EACH_FIELD (s) {
        switch (f.number) {
        case 1:
            EXPECT(&f, WT_VARINT);
            raw->method = (int32_t)(uint32_t)f.varint;
            break;
        case 2:
        case 3:
        case 5:
        case 6:
        case 9:
            EXPECT(&f, WT_LEN);
            *(f.number == 2   ? &raw->scheme
              : f.number == 3 ? &raw->authority
              : f.number == 5 ? &raw->path
              : f.number == 6 ? &raw->user_agent
                              : &raw->request_id) = f.bytes;
            break;
        case 13:
            if (f.wire_type != WT_LEN || !add_span(&raw->request_headers, f.bytes)) {
                return 0;
            }
            break;
        default:
            break;
        }
    }
    return ok;
}

static int
read_response(Span s, Raw *raw)
{
    FOR_EACH_FIELD (s) {
        if (f.number == 1) { /* google.protobuf.UInt32Value */
            EXPECT(&f, WT_LEN);
            Reader inner = reader_of(f.bytes);
            Field g;
            uint64_t inner_seen = 0;
            while (next_field(&inner, &g, &ok)) {
                if (g.number == 1) {
                    if (g.wire_type != WT_VARINT || !first_time(&inner_seen, 1)) {
                        return 0;
                    }
                    raw->response_code = (uint32_t)g.varint;
                }
            }
            if (!ok) {
                return 0;
            }
        }
        else if (f.number == 4 || f.number == 5) {
            if (f.wire_type != WT_LEN ||
                !add_span(f.number == 4 ? &raw->response_headers : &raw->response_trailers, f.bytes)) {
                return 0;
            }
        }
    }
    return ok;
}

static int
read_connection(Span s, Raw *raw)
{
    FOR_EACH_FIELD (s) {
        if (f.number == 1 || f.number == 2) {
            EXPECT(&f, WT_VARINT);
            *(f.number == 1 ? &raw->received_bytes : &raw->sent_bytes) = f.varint;
        }
    }
    return ok;
}

/* The entry's top level: common_properties (1) and, for HTTP, protocol_version (2), request (3)
   and response (4); for TCP, connection_properties (2). */
static int
read_entry(Span s, int http, Raw *raw)
{
    int has_common = 0;
    FOR_EACH_FIELD (s) {
        if (f.number == 1) {
            EXPECT(&f, WT_LEN);
            has_common = 1;
            if (!read_common(f.bytes, raw)) {
                return 0;
            }
        }
        else if (f.number == 2 && http) {
            EXPECT(&f, WT_VARINT);
            raw->protocol_version = (int32_t)(uint32_t)f.varint;
        }
        else if (f.number == 2) {
            EXPECT(&f, WT_LEN);
            if (!read_connection(f.bytes, raw)) {
                return 0;
            }
        }
        else if ((f.number == 3 || f.number == 4) && http) {
            EXPECT(&f, WT_LEN);
            if (!(f.number == 3 ? read_request : read_response)(f.bytes, raw)) {
                return 0;
            }
        }
    }
    return ok && has_common;
}

/* _begin's checks of times: anything it refuses (or that is unset) is the Python path's to say. */
static int
times_usable(Raw *raw)
{
    if (raw->start_ns == 0) {
        return 0;
    }
    if (raw->last_downstream_tx == 0) {
        raw->last_downstream_tx = raw->duration;
    }
    return 0 <= raw->first_tx && raw->first_tx <= MAX_DURATION_NS && 0 <= raw->last_rx &&
           raw->last_rx <= MAX_DURATION_NS && 0 <= raw->last_downstream_tx &&
           raw->last_downstream_tx <= MAX_DURATION_NS;
}

static PyObject *
filter_state_dict(const MapSpans *map)
{
    if (map->count == 0) {
        Py_RETURN_NONE;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    for (int i = 0; i < map->count; i++) {
        Span key, value, type_url = {NULL, 0}, bytes = {NULL, 0};
        if (!pair_fields(map->entries[i], &key, &value)) {
            goto not_ours;
        }
        if (value.data != NULL && !pair_fields(value, &type_url, &bytes)) { /* Any: type_url, value */
            goto not_ours;
        }
        PyObject *name = text_strict(key);
        PyObject *url = name ? text_strict(type_url) : NULL;
        if (url == NULL) {
            Py_XDECREF(name);
            if (PyErr_Occurred()) {
                goto error;
            }
            goto not_ours;
        }
        PyObject *data = PyBytes_FromStringAndSize(bytes.data ? (const char *)bytes.data : "", bytes.size);
        if (put(dict, name, named_pair(any_value_type, url, data)) < 0) {
            goto error;
        }
    }
    return dict;
not_ours: /* no exception set: the caller answers None */
error:
    Py_DECREF(dict);
    return NULL;
}

/* _grpc_status: ASCII digits, one to three of them, as their number; else -1. */
static long
grpc_status_code(Span s)
{
    if (s.size < 1 || s.size > 3) {
        return -1;
    }
    long code = 0;
    for (Py_ssize_t i = 0; i < s.size; i++) {
        if (s.data[i] < '0' || s.data[i] > '9') {
            return -1;
        }
        code = code * 10 + (s.data[i] - '0');
    }
    return code;
}

static PyObject *
flags_tuple(uint32_t flags)
{
    PyObject *codes[28];
    Py_ssize_t n = 0;
    for (int number = 1; number <= 27; number++) {
        if (flags & (1U << number)) {
            codes[n++] = flag_codes[number];
        }
    }
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(codes[i]);
        PyTuple_SET_ITEM(tuple, i, codes[i]);
    }
    return tuple;
}

static PyObject *
make_entry(PyObject **values)
{
    if (field_setters[0] == NULL && field_members[0] == NULL) {
        return PyObject_Vectorcall(entry_type, values, ENTRY_FIELDS, NULL);
    }
    PyObject *entry = ((PyTypeObject *)entry_type)->tp_new((PyTypeObject *)entry_type, no_arguments, NULL);
    for (int i = 0; entry != NULL && i < ENTRY_FIELDS; i++) {
        int stored = field_setters[i] ? field_setters[i](entry, values[i], field_closures[i])
                                      : PyMember_SetOne((char *)entry, field_members[i], values[i]);
        if (stored < 0) {
            Py_CLEAR(entry);
        }
    }
    return entry;
}

/* The descriptors make_entry stores the fields through; none (calling the type instead) unless
   every field has a getset or member descriptor of the type's own. */
static int
find_setters(PyObject *type)
{
    setter setters[ENTRY_FIELDS] = {NULL};
    void *closures[ENTRY_FIELDS] = {NULL};
    PyMemberDef *members[ENTRY_FIELDS] = {NULL};
    int usable = PyType_Check(type) && ((PyTypeObject *)type)->tp_new != NULL;
    for (int i = 0; usable && i < ENTRY_FIELDS; i++) {
        PyObject *descriptor = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, FIELD_NAMES[i]);
        if (descriptor != NULL && Py_IS_TYPE(descriptor, &PyGetSetDescr_Type) &&
            ((PyGetSetDescrObject *)descriptor)->d_getset->set != NULL) {
            setters[i] = ((PyGetSetDescrObject *)descriptor)->d_getset->set;
            closures[i] = ((PyGetSetDescrObject *)descriptor)->d_getset->closure;
        }
        else if (descriptor != NULL && Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
            members[i] = ((PyMemberDescrObject *)descriptor)->d_member;
        }
        else {
            usable = 0;
        }
    }
    for (int i = 0; i < ENTRY_FIELDS; i++) {
        field_setters[i] = usable ? setters[i] : NULL;
        field_closures[i] = usable ? closures[i] : NULL;
        field_members[i] = usable ? members[i] : NULL;
    }
    if (no_arguments == NULL && (no_arguments = PyTuple_New(0)) == NULL) {
        return 0;
    }
    return 1;
}

/* decode(encoded, http, api_version, cache) -> Entry | None */
static PyObject *
decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "decode(encoded: bytes, http: bool, api_version: str, cache)");
        return NULL;
    }
    if (entry_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "als2otel.receiver._entries: configure() first");
        return NULL;
    }
    int http = PyObject_IsTrue(args[1]);
    PyObject *cache = args[3];
    Span encoded = {(const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0])};
    Raw raw;
    memset(&raw, 0, sizeof raw);
    if (http < 0) {
        return NULL;
    }
    if (!read_entry(encoded, http, &raw) || !times_usable(&raw)) {
        Py_RETURN_NONE;
    }

    PyObject *values[ENTRY_FIELDS] = {NULL};
    PyObject *result = NULL;
    PyObject *addresses = PyObject_GetAttr(cache, str_addresses);
    PyObject *max_obj = addresses ? PyObject_GetAttr(cache, str_max) : NULL;
    Py_ssize_t max = max_obj ? PyLong_AsSsize_t(max_obj) : -1;
    Py_XDECREF(max_obj);
    if (addresses == NULL || (max == -1 && PyErr_Occurred())) {
        goto done;
    }
    if (!PyDict_CheckExact(addresses)) {
        PyErr_SetString(PyExc_TypeError, "cache.addresses is not a dict");
        goto done;
    }

    /* The strings upb checks while parsing come first: an entry whose upstream_cluster is not
       UTF-8 is malformed_entry before any of its addresses is looked at. */
    if ((values[11] = recent_text(raw.upstream_cluster, 0)) == NULL ||
        (values[12] = recent_text(raw.route_name, 0)) == NULL ||
        (values[16] = filter_state_dict(&raw.filter_state)) == NULL) {
        goto done;
    }
    if (http) {
        Span header_status = {NULL, 0}, trailer_status = {NULL, 0};
        static RecentNames request_names, response_names, trailer_names;
        if ((values[26] = text_map(&raw.request_headers, NULL, &request_names)) == NULL ||
            (values[27] = text_map(&raw.response_headers, &header_status, &response_names)) == NULL) {
            goto done;
        }
        PyObject *trailers = text_map(&raw.response_trailers, &trailer_status, &trailer_names);
        if (trailers == NULL) {
            goto done;
        }
        Py_DECREF(trailers);
        /* grpc-status: the trailer's unless empty or absent, else the header's (the Python path
           decodes the header's first: a value of ASCII digits reads the same either way). */
        Span status = trailer_status.size ? trailer_status : header_status;
        int grpc = status.data != NULL;
        if (!grpc && values[26] != Py_None) {
            PyObject *content_type = PyDict_GetItemWithError(values[26], str_content_type);
            if (content_type == NULL && PyErr_Occurred()) {
                goto done;
            }
            if (content_type != NULL) {
                Py_ssize_t match = PyUnicode_Tailmatch(content_type, str_application_grpc, 0, PY_SSIZE_T_MAX, -1);
                if (match < 0) {
                    goto done;
                }
                grpc = match == 1;
            }
        }
        values[1] = Py_NewRef(grpc ? str_grpc : str_http);
        values[17] = Py_NewRef(0 <= raw.method && raw.method < 10 ? methods[raw.method] : str_empty);
        values[18] = recent_text(raw.scheme, 1);
        values[19] = recent_text(raw.authority, 1);
        values[20] = text_lenient(raw.path);
        values[21] = recent_text(raw.user_agent, 1);
        values[22] = text_lenient(raw.request_id);
        values[23] = Py_NewRef(
            0 <= raw.protocol_version && raw.protocol_version < 5 ? http_versions[raw.protocol_version]
                                                                  : str_empty);
        values[24] = PyLong_FromUnsignedLong(raw.response_code);
        values[25] = PyLong_FromLong(status.data != NULL ? grpc_status_code(status) : -1);
        values[28] = PyLong_FromLong(0);
        values[29] = PyLong_FromLong(0);
    }
    else {
        values[1] = Py_NewRef(str_tcp);
        for (int i = 17; i < 24; i++) {
            values[i] = Py_NewRef(str_empty);
        }
        values[24] = PyLong_FromLong(0);
        values[25] = PyLong_FromLong(-1);
        values[26] = Py_NewRef(Py_None);
        values[27] = Py_NewRef(Py_None);
        values[28] = PyLong_FromUnsignedLongLong(raw.received_bytes);
        values[29] = PyLong_FromUnsignedLongLong(raw.sent_bytes);
    }
    values[0] = Py_NewRef(args[2]);
    values[2] = PyLong_FromLongLong(raw.start_ns);
    values[3] = PyLong_FromLongLong(raw.last_downstream_tx ? raw.last_downstream_tx : -1);
    values[4] = PyLong_FromLongLong(raw.first_tx ? raw.first_tx : -1);
    values[5] = PyLong_FromLongLong(raw.last_rx ? raw.last_rx : -1);
    values[13] = flags_tuple(raw.flags);
    values[14] = Py_NewRef(raw.peer_uri.data ? Py_True : Py_False);
    values[15] = recent_text(raw.peer_uri, 1);
    for (int i = 0; i < 5; i++) {
        if ((values[6 + i] = address(cache, addresses, max, raw.addresses[i], i)) == NULL) {
            goto done;
        }
    }
    for (int i = 0; i < ENTRY_FIELDS; i++) {
        if (values[i] == NULL) {
            goto done;
        }
    }
    result = make_entry(values);
done:
    Py_XDECREF(addresses);
    for (int i = 0; i < ENTRY_FIELDS; i++) {
        Py_XDECREF(values[i]);
    }
    if (result == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE; /* not ours: a string that is not UTF-8, a map entry out of the ordinary */
    }
    return result;
}

/* ---- OTLP log records (Envoy's OpenTelemetry access logger) -------------------------------------- */

/* An AnyValue's one member: its kind (the field number, 0 for none), its bytes (string, bytes)
   or its 64 bits (bool, int, double). 0: a list, a map, a member set twice, or a kind this reader
   does not know (the Python path's). The usual value, a string alone, is read without the loop. */
static int
any_value(Span s, int *kind, Span *text, uint64_t *number)
{
    Reader fast = {s.data, s.data + s.size};
    if (take_len_field(&fast, 0x0a, text) && fast.p == fast.end) {
        *kind = 1;
        return 1;
    }
    *kind = 0;
    text->data = NULL;
    text->size = 0;
    *number = 0;
    FOR_EACH_FIELD (s) {
        if (!first_time(&seen, f.number) || *kind != 0) {
            return 0; /* a oneof member set twice, or two of them: the last wins in protobuf */
        }
        *kind = (int)f.number;
        if ((*kind == 1 || *kind == 7) && f.wire_type == WT_LEN) {
            *text = f.bytes;
        }
        else if ((*kind == 2 || *kind == 3) && f.wire_type == WT_VARINT) {
            *number = f.varint;
        }
        else if (*kind == 4 && f.wire_type == WT_I64) {
            memcpy(number, r.p - 8, 8); /* little-endian, as the wire and this machine */
        }
        else {
            return 0;
        }
    }
    return ok;
}

/* An AnyValue's text as otlp_logs.strings gives it: a string as it is, a whole number, double or
   boolean as str() writes it; *out NULL (no exception) for the kinds it skips. 0: the Python path's
   (a list, a map, a member set twice, a string that is not UTF-8, a kind this reader does not know). */
static int
any_text(Span s, PyObject **out)
{
    *out = NULL;
    int kind;
    Span text;
    uint64_t number;
    if (!any_value(s, &kind, &text, &number)) {
        return 0;
    }
    PyObject *value = NULL;
    switch (kind) {
    case 0:
    case 7:
        return 1; /* no value, or bytes: skipped */
    case 1:
        if ((*out = text_strict(text)) == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        return 1;
    case 2:
        value = Py_NewRef(number ? Py_True : Py_False);
        break;
    case 3:
        value = PyLong_FromLongLong((long long)number);
        break;
    default: {
        double d;
        memcpy(&d, &number, sizeof d);
        value = PyFloat_FromDouble(d);
    }
    }
    if (value == NULL) {
        return -1;
    }
    *out = PyObject_Str(value);
    Py_DECREF(value);
    return *out == NULL ? -1 : 1;
}

static RecentNames record_names;
static Py_ssize_t record_attribute_count;

/* What a record walk does with each attribute (its position among them, its key, its AnyValue):
   1 go on, 0 leave the record to the Python path, -1 an exception. */
typedef int (*OnAttribute)(void *context, Py_ssize_t position, Span key, Span value);

/* The LogRecord in s, field by field as protobuf reads it: 1 when every field is one this version
   of OTLP declares, each once and of its type (its time in *time_unix_nano), 0 for anything else
   (the Python path decides), -1 on an exception. */
static int
walk_record(Span s, OnAttribute on_attribute, void *context, uint64_t *time_unix_nano)
{
    int result = 1;
    Py_ssize_t position = 0; /* of the attribute */
    *time_unix_nano = 0;
    FOR_EACH_FIELD (s) {
        switch (f.number) {
        case 1: /* time_unix_nano */
        case 11: /* observed_time_unix_nano */
            if (f.wire_type != WT_I64 || !first_time(&seen, f.number)) {
                result = 0;
            }
            else if (f.number == 1) {
                memcpy(time_unix_nano, r.p - 8, 8);
            }
            break;
        case 2: /* severity_number */
        case 7: /* dropped_attributes_count */
            result = f.wire_type == WT_VARINT && first_time(&seen, f.number);
            break;
        case 8: /* flags */
            result = f.wire_type == WT_I32 && first_time(&seen, f.number);
            break;
        case 9: /* trace_id */
        case 10: /* span_id */
            result = f.wire_type == WT_LEN && first_time(&seen, f.number);
            break;
        case 3: /* severity_text */
        case 12: /* event_name */
        case 5: { /* body */
            PyObject *text = NULL;
            if (f.wire_type != WT_LEN || !first_time(&seen, f.number)) {
                result = 0;
            }
            else if (f.number == 5) {
                result = any_text(f.bytes, &text);
            }
            else if ((text = text_strict(f.bytes)) == NULL) {
                result = PyErr_Occurred() ? -1 : 0;
            }
            Py_XDECREF(text);
            break;
        }
        case 6: { /* attributes: KeyValue{key = 1, value = 2} */
            Span key, value;
            if (f.wire_type != WT_LEN || !pair_fields(f.bytes, &key, &value)) {
                result = 0;
            }
            else {
                result = on_attribute(context, position++, key, value);
            }
            break;
        }
        default:
            break; /* a field this version of OTLP does not have: skipped, as protobuf skips it */
        }
        if (result != 1) {
            break;
        }
    }
    return result == 1 && !ok ? 0 : result;
}

static int
put_attribute(void *attributes, Py_ssize_t position, Span key, Span value)
{
    PyObject *text = NULL, *name = NULL;
    int result = any_text(value, &text);
    if (result != 1 || text == NULL) {
        return result; /* 1 with no text: no value, or bytes, which strings() skips */
    }
    if ((name = recent_name(&record_names, position, key)) == NULL) {
        Py_DECREF(text);
        return PyErr_Occurred() ? -1 : 0;
    }
    return put((PyObject *)attributes, name, text) < 0 ? -1 : 1;
}

/* Arguments (raw, start, end, ...) as a span of raw; 0 (a ValueError set) when they are not. */
static int
record_span(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected, Span *out)
{
    Py_ssize_t start, end;
    if (nargs != expected || !PyBytes_Check(args[0]) || (start = PyLong_AsSsize_t(args[1])) < 0 ||
        (end = PyLong_AsSsize_t(args[2])) < start || end > PyBytes_GET_SIZE(args[0])) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the record must be raw[start:end] of bytes raw");
        }
        return 0;
    }
    out->data = (const uint8_t *)PyBytes_AS_STRING(args[0]) + start;
    out->size = end - start;
    return 1;
}

/* record(raw, start, end) -> (attributes, time_unix_nano) | None: the LogRecord in raw[start:end]
   read as server._read_record reads it (protobuf, then otlp_logs.strings of its attributes). */
static PyObject *
record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Span s;
    if (!record_span(args, nargs, 3, &s)) {
        return NULL;
    }
    /* sized for as many attributes as the record before had: no resizing as it fills */
    PyObject *attributes = _PyDict_NewPresized(record_attribute_count);
    if (attributes == NULL) {
        return NULL;
    }
    uint64_t time_unix_nano;
    int result = walk_record(s, put_attribute, attributes, &time_unix_nano);
    if (result != 1) {
        Py_DECREF(attributes);
        if (result < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    record_attribute_count = PyDict_GET_SIZE(attributes) < 1024 ? PyDict_GET_SIZE(attributes) : 1024;
    PyObject *time = PyLong_FromUnsignedLongLong(time_unix_nano);
    if (time == NULL) {
        Py_DECREF(attributes);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, attributes, time);
    Py_DECREF(attributes);
    Py_DECREF(time);
    return out;
}

/* ---- OTLP records into ALS entries ------------------------------------------------------------ */

/* The native twin of otlp_logs.entry_of_python, which stays the definition: the same entry
   (compared message for message by tests/receiver/test_native.py), or None where that function
   raises InvalidEntry or meets what this one leaves to it (filter state, which is JSON; a port 0;
   a value that is not a str, or not encodable). */

static PyObject *log_type_names[14]; /* AccessLogType names by value */

enum { /* the record attributes read here, by their index in ATTRIBUTE_NAMES */
    A_LOG_TYPE, A_START_TIME, A_DS_REMOTE, A_DS_DIRECT_REMOTE, A_DS_LOCAL, A_US_REMOTE, A_US_LOCAL,
    A_CLUSTER, A_ROUTE, A_ACCESS_LOG_TYPE, A_DURATION, A_US_REQUEST_START, A_US_RESPONSE_END, A_FLAGS,
    A_PEER_SAN, A_BYTES_RECEIVED, A_BYTES_SENT, A_PROTOCOL, A_METHOD, A_SCHEME, A_HOST, A_PATH,
    A_USER_AGENT, A_REQUEST_ID, A_TRACEPARENT, A_TRACESTATE, A_B3, A_B3_TRACE, A_B3_SPAN,
    A_CONTENT_TYPE, A_STATUS_CODE, A_GRPC_HEADER, A_GRPC_TRAILER, A_FILTER_STATE /* the first of 5 */,
    ATTRIBUTE_COUNT = A_FILTER_STATE + 5,
};
static const char *ATTRIBUTE_NAMES[ATTRIBUTE_COUNT] = {
    "envoy.log_type", "envoy.start_time", "envoy.downstream.remote_address",
    "envoy.downstream.direct_remote_address", "envoy.downstream.local_address",
    "envoy.upstream.remote_address", "envoy.upstream.local_address", "envoy.upstream.cluster",
    "envoy.route_name", "envoy.access_log_type", "envoy.duration_ns", "envoy.upstream.request_start_ns",
    "envoy.upstream.response_end_ns", "envoy.response_flags", "envoy.downstream.peer_uri_san",
    "envoy.bytes_received", "envoy.bytes_sent", "network.protocol.name", "http.request.method",
    "url.scheme", "http.request.header.host", "url.path", "user_agent.original",
    "http.request.header.x-request-id", "http.request.header.traceparent",
    "http.request.header.tracestate", "http.request.header.b3", "http.request.header.x-b3-traceid",
    "http.request.header.x-b3-spanid", "http.request.header.content-type", "http.response.status_code",
    "http.response.header.grpc-status", "http.response.trailer.grpc-status",
    "envoy.filter_state.upstream_peer", "envoy.filter_state.downstream_peer",
    "envoy.filter_state.wasm.upstream_peer", "envoy.filter_state.wasm.downstream_peer",
    "envoy.upstream_filter_state.upstream_peer",
};
static PyObject *attribute_keys[ATTRIBUTE_COUNT];

typedef struct {
    uint8_t *data;
    Py_ssize_t size, capacity;
    int failed; /* out of memory: the exception is set */
} Buffer;

static void
grow(Buffer *b, Py_ssize_t extra)
{
    if (b->failed || b->size + extra <= b->capacity) {
        return;
    }
    Py_ssize_t capacity = b->capacity ? b->capacity : 256;
    while (capacity < b->size + extra) {
        capacity *= 2;
    }
    uint8_t *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        b->failed = 1;
        PyErr_NoMemory();
        return;
    }
    b->data = data;
    b->capacity = capacity;
}

static void
put_bytes(Buffer *b, const void *data, Py_ssize_t size)
{
    grow(b, size);
    if (!b->failed && size) {
        memcpy(b->data + b->size, data, size);
        b->size += size;
    }
}

static void
put_varint(Buffer *b, uint64_t value)
{
    uint8_t bytes[10];
    int n = 0;
    while (value >= 0x80) {
        bytes[n++] = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    bytes[n++] = (uint8_t)value;
    put_bytes(b, bytes, n);
}

static void
put_varint_field(Buffer *b, int number, uint64_t value)
{
    put_varint(b, (uint64_t)number << 3 | WT_VARINT);
    put_varint(b, value);
}

static void
put_len_field(Buffer *b, int number, const void *data, Py_ssize_t size)
{
    put_varint(b, (uint64_t)number << 3 | WT_LEN);
    put_varint(b, (uint64_t)size);
    put_bytes(b, data, size);
}

/* A Timestamp or Duration of ``seconds`` and ``nanos`` (both set only when not zero), as field
   ``number``: protobuf's FromNanoseconds. */
static void
put_time_field(Buffer *b, int number, uint64_t seconds, uint64_t nanos)
{
    uint8_t bytes[24]; /* two varints of at most 10 bytes, and their tags: never grown */
    Buffer inner = {bytes, 0, sizeof bytes, 0};
    if (seconds) {
        put_varint_field(&inner, 1, seconds);
    }
    if (nanos) {
        put_varint_field(&inner, 2, nanos);
    }
    put_len_field(b, number, inner.data, inner.size);
}

/* otlp_logs._value: the attribute's text as UTF-8 (owned by its str), empty when absent or
   Envoy's "-". 0: not a str, or one that does not encode (the Python path decides); -1: an
   exception. */
static int
attribute(PyObject *attributes, int index, Span *out)
{
    PyObject *value = PyDict_GetItemWithError(attributes, attribute_keys[index]);
    out->data = (const uint8_t *)"";
    out->size = 0;
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 1;
    }
    if (!PyUnicode_CheckExact(value)) {
        return 0;
    }
    const char *data = PyUnicode_AsUTF8AndSize(value, &out->size);
    if (data == NULL) {
        PyErr_Clear(); /* a lone surrogate: the Python path's encode() raises it as it always did */
        out->size = 0;
        return 0;
    }
    if (out->size == 1 && data[0] == '-') {
        out->size = 0;
        return 1;
    }
    out->data = (const uint8_t *)data;
    return 1;
}

static int
equals_str(Span t, PyObject *str)
{
    Py_ssize_t n;
    const char *data = PyUnicode_AsUTF8AndSize(str, &n);
    return data != NULL && t.size == n && memcmp(t.data, data, n) == 0;
}

static int
all_digits(const uint8_t *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

static uint64_t
digits_value(const uint8_t *p, Py_ssize_t n) /* at most 19 digits: no overflow */
{
    uint64_t value = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        value = value * 10 + (uint64_t)(p[i] - '0');
    }
    return value;
}

/* otlp_logs._number: 0 for no text; 0 returned (Python path) for anything it refuses. */
static int
number(Span t, uint64_t maximum, uint64_t *out)
{
    *out = 0;
    if (t.size == 0) {
        return 1;
    }
    if (t.size > 19 || !all_digits(t.data, t.size)) {
        return 0; /* 20 digits may pass 64 bits: the Python path decides those too */
    }
    *out = digits_value(t.data, t.size);
    return *out <= maximum;
}

/* net.split_hostport, then the encoded Address; 0: not one (or port 0), the Python path's. */
static int
put_address(Buffer *b, int number, Span t)
{
    const uint8_t *host, *port;
    Py_ssize_t host_size, port_size;
    if (t.size && t.data[0] == '[') {
        const uint8_t *end = memchr(t.data, ']', t.size);
        if (end == NULL || end + 1 >= t.data + t.size || end[1] != ':') {
            return 0;
        }
        host = t.data + 1;
        host_size = end - host;
        port = end + 2;
        port_size = t.data + t.size - port;
    }
    else {
        const uint8_t *colon = NULL;
        for (const uint8_t *p = t.data; p < t.data + t.size; p++) {
            if (*p == ':') {
                if (colon != NULL) {
                    return 0; /* two colons outside brackets: not host:port */
                }
                colon = p;
            }
        }
        if (colon == NULL) {
            return 0;
        }
        host = t.data;
        host_size = colon - host;
        port = colon + 1;
        port_size = t.data + t.size - port;
    }
    if (host_size == 0 || port_size == 0 || port_size > 5 || !all_digits(port, port_size)) {
        return 0;
    }
    uint64_t port_value = digits_value(port, port_size);
    if (port_value == 0 || port_value > 65535) {
        return 0;
    }
    Buffer socket = {NULL, 0, 0, 0};
    put_len_field(&socket, 2, host, host_size);
    put_varint_field(&socket, 3, port_value);
    Buffer address = {NULL, 0, 0, 0};
    put_len_field(&address, 1, socket.data, socket.size);
    put_len_field(b, number, address.data, address.size);
    int failed = socket.failed || address.failed;
    PyMem_Free(socket.data);
    PyMem_Free(address.data);
    return failed ? -1 : 1;
}

/* A map<string, bytes> entry (key = 1, value = 2) as field ``number``. */
static void
put_map_entry(Buffer *b, int number, const char *key, Span value)
{
    Buffer entry = {NULL, 0, 0, 0};
    put_len_field(&entry, 1, key, (Py_ssize_t)strlen(key));
    put_len_field(&entry, 2, value.data, value.size);
    put_len_field(b, number, entry.data, entry.size);
    if (entry.failed) {
        b->failed = 1;
    }
    PyMem_Free(entry.data);
}

/* entry(attributes, time_unix_nano) -> (log_type, encoded entry) | None: otlp_logs.entry_of_python's
   result, or None for it to decide. */
static PyObject *encode_entry(const Span *a, int tcp, unsigned long long time_unix_nano);

static PyObject *
entry_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "entry(attributes: dict, time_unix_nano: int)");
        return NULL;
    }
    if (!PyDict_CheckExact(args[0])) {
        Py_RETURN_NONE;
    }
    Span a[ATTRIBUTE_COUNT];
    for (int i = 0; i < ATTRIBUTE_COUNT; i++) {
        int got = attribute(args[0], i, &a[i]);
        if (got <= 0) {
            if (got < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    PyObject *raw_type = PyDict_GetItemWithError(args[0], attribute_keys[A_LOG_TYPE]);
    if (raw_type == NULL && PyErr_Occurred()) {
        return NULL;
    }
    int tcp = raw_type != NULL && PyUnicode_CheckExact(raw_type) && PyUnicode_CompareWithASCIIString(raw_type, "tcp") == 0;
    unsigned long long time_unix_nano = PyLong_AsUnsignedLongLong(args[1]);
    if (time_unix_nano == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE; /* not a fixed64: the Python path's */
    }
    return encode_entry(a, tcp, time_unix_nano);
}

/* The (log type, entry) of a record's attributes a (by their index; "-" read as empty), None for
   what otlp_logs.entry_of_python reads itself or refuses. */
static PyObject *
encode_entry(const Span *a, int tcp, unsigned long long time_unix_nano)
{
    for (int i = A_FILTER_STATE; i < ATTRIBUTE_COUNT; i++) {
        if (a[i].size) {
            Py_RETURN_NONE; /* filter state is JSON: otlp_logs reads it */
        }
    }
    /* The start: the record's time, else envoy.start_time (seconds.nanoseconds). */
    uint64_t seconds, nanos;
    if (time_unix_nano) {
        seconds = time_unix_nano / NS;
        nanos = time_unix_nano % NS;
    }
    else {
        Span t = a[A_START_TIME];
        const uint8_t *dot = t.size ? memchr(t.data, '.', t.size) : NULL;
        const uint8_t *fraction_digits = dot ? dot + 1 : t.data + t.size;
        Py_ssize_t whole = dot ? dot - t.data : t.size, fraction = dot ? t.size - whole - 1 : 0;
        if (whole == 0 || whole > 12 || !all_digits(t.data, whole) || fraction > 9 ||
            !all_digits(fraction_digits, fraction)) {
            Py_RETURN_NONE;
        }
        seconds = digits_value(t.data, whole);
        nanos = digits_value(fraction_digits, fraction);
        for (Py_ssize_t i = fraction; i < 9; i++) {
            nanos *= 10;
        }
        if (seconds > 253402300799ULL || (seconds == 0 && nanos == 0)) {
            Py_RETURN_NONE; /* past the year 9999, or no start at all */
        }
    }

    Buffer common = {NULL, 0, 0, 0}, entry = {NULL, 0, 0, 0}, part = {NULL, 0, 0, 0};
    PyObject *result = NULL;
    static const int ADDRESS_FIELDS[5] = {2, 20, 3, 13, 14};
    put_time_field(&common, 5, seconds, nanos);
    for (int i = 0; i < 5; i++) {
        if (a[A_DS_REMOTE + i].size) {
            int put = put_address(&common, ADDRESS_FIELDS[i], a[A_DS_REMOTE + i]);
            if (put <= 0) {
                goto done;
            }
        }
    }
    if (a[A_CLUSTER].size) {
        put_len_field(&common, 15, a[A_CLUSTER].data, a[A_CLUSTER].size);
    }
    if (a[A_ROUTE].size) {
        put_len_field(&common, 19, a[A_ROUTE].data, a[A_ROUTE].size);
    }
    if (a[A_ACCESS_LOG_TYPE].size) {
        for (int i = 1; i < 14; i++) {
            if (equals_str(a[A_ACCESS_LOG_TYPE], log_type_names[i])) {
                put_varint_field(&common, 33, (uint64_t)i);
                break;
            }
        }
    }
    static const int DURATION_ATTRIBUTES[3] = {A_DURATION, A_US_REQUEST_START, A_US_RESPONSE_END};
    const int duration_fields[3] = {tcp ? 23 : 12, 7, 10};
    for (int i = 0; i < 3; i++) {
        uint64_t ns;
        /* at most 19 digits here, well within a Duration's 10,000 years */
        if (!number(a[DURATION_ATTRIBUTES[i]], UINT64_MAX, &ns)) {
            goto done;
        }
        if (ns) {
            put_time_field(&common, duration_fields[i], ns / NS, ns % NS);
        }
    }
    /* %RESPONSE_FLAGS%: codes between commas; unknown ones (and UAEX, a message) are skipped. */
    int flags[28] = {0}, any_flag = 0;
    for (const uint8_t *p = a[A_FLAGS].data, *end = p + a[A_FLAGS].size; p <= end && a[A_FLAGS].size;) {
        const uint8_t *comma = memchr(p, ',', end - p);
        Span code = {p, (comma ? comma : end) - p};
        for (int n = 1; n < 28; n++) {
            if (n != 13 && equals_str(code, flag_codes[n])) {
                flags[n] = any_flag = 1;
            }
        }
        if (comma == NULL) {
            break;
        }
        p = comma + 1;
    }
    if (any_flag) {
        for (int n = 1; n < 28; n++) {
            if (flags[n]) {
                put_varint_field(&part, n, 1);
            }
        }
        put_len_field(&common, 16, part.data, part.size);
        part.size = 0;
    }
    if (a[A_PEER_SAN].size) { /* tls_properties.peer_certificate_properties.subject_alt_name.uri */
        Buffer san = {NULL, 0, 0, 0}, certificate = {NULL, 0, 0, 0};
        put_len_field(&san, 1, a[A_PEER_SAN].data, a[A_PEER_SAN].size);
        put_len_field(&certificate, 1, san.data, san.size);
        put_len_field(&part, 5, certificate.data, certificate.size);
        put_len_field(&common, 4, part.data, part.size);
        part.size = 0;
        common.failed |= san.failed | certificate.failed;
        PyMem_Free(san.data);
        PyMem_Free(certificate.data);
    }
    put_len_field(&entry, 1, common.data, common.size);
    if (tcp) {
        uint64_t received, sent;
        if (!number(a[A_BYTES_RECEIVED], UINT64_MAX, &received) || !number(a[A_BYTES_SENT], UINT64_MAX, &sent)) {
            goto done;
        }
        if (received) {
            put_varint_field(&part, 1, received);
        }
        if (sent) {
            put_varint_field(&part, 2, sent);
        }
        put_len_field(&entry, 2, part.data, part.size);
    }
    else {
        Span protocol = a[A_PROTOCOL];
        for (int i = 1; i < 5; i++) {
            Py_ssize_t n;
            const char *version = PyUnicode_AsUTF8AndSize(http_versions[i], &n);
            if (version != NULL && protocol.size == n + 5 && memcmp(protocol.data, "HTTP/", 5) == 0 &&
                memcmp(protocol.data + 5, version, n) == 0) {
                put_varint_field(&entry, 2, (uint64_t)i);
                break;
            }
        }
        for (int i = 1; i < 10; i++) {
            if (a[A_METHOD].size && equals_str(a[A_METHOD], methods[i])) {
                put_varint_field(&part, 1, (uint64_t)i);
                break;
            }
        }
        static const int REQUEST_FIELDS[][2] = {
            {2, A_SCHEME}, {3, A_HOST}, {5, A_PATH}, {6, A_USER_AGENT}, {9, A_REQUEST_ID},
        };
        for (int i = 0; i < 5; i++) {
            Span t = a[REQUEST_FIELDS[i][1]];
            if (t.size) {
                put_len_field(&part, REQUEST_FIELDS[i][0], t.data, t.size);
            }
        }
        static const char *HEADERS[6] = {"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "content-type"};
        for (int i = 0; i < 6; i++) {
            if (a[A_TRACEPARENT + i].size) {
                put_map_entry(&part, 13, HEADERS[i], a[A_TRACEPARENT + i]);
            }
        }
        put_len_field(&entry, 3, part.data, part.size);
        part.size = 0;
        uint64_t code;
        if (!number(a[A_STATUS_CODE], UINT32_MAX, &code)) {
            goto done;
        }
        if (code) {
            uint8_t value[12];
            Buffer wrapper = {value, 0, sizeof value, 0};
            put_varint_field(&wrapper, 1, code);
            put_len_field(&part, 1, wrapper.data, wrapper.size);
        }
        if (a[A_GRPC_HEADER].size) {
            put_map_entry(&part, 4, "grpc-status", a[A_GRPC_HEADER]);
        }
        if (a[A_GRPC_TRAILER].size) {
            put_map_entry(&part, 5, "grpc-status", a[A_GRPC_TRAILER]);
        }
        if (code || a[A_GRPC_HEADER].size || a[A_GRPC_TRAILER].size) {
            put_len_field(&entry, 4, part.data, part.size);
        }
    }
    if (!(common.failed || entry.failed || part.failed)) {
        PyObject *encoded = PyBytes_FromStringAndSize((const char *)entry.data, entry.size);
        if (encoded != NULL) {
            result = PyTuple_Pack(2, tcp ? str_tcp : str_http, encoded);
            Py_DECREF(encoded);
        }
    }
done:
    PyMem_Free(common.data);
    PyMem_Free(entry.data);
    PyMem_Free(part.data);
    if (result == NULL && !PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    return result;
}

/* ---- OTLP records straight into ALS entries ---------------------------------------------------- */

/* record_entry() reads a record's attributes where they lie in its bytes, never as Python strings:
   the ones entry() reads, and the reporting proxy's, which name it (otlp_logs._NODE_KEYS). */
#define NODE_COUNT 12
static const char *NODE_NAMES[NODE_COUNT] = {
    "envoy.node.id",
    "envoy.node.metadata.NAME",
    "envoy.node.metadata.NAMESPACE",
    "envoy.node.metadata.WORKLOAD_NAME",
    "envoy.node.metadata.OWNER",
    "envoy.node.metadata.CLUSTER_ID",
    "envoy.node.metadata.INSTANCE_IPS",
    "envoy.node.labels.app",
    "envoy.node.labels.version",
    "envoy.node.labels.service.istio.io/canonical-name",
    "envoy.node.labels.service.istio.io/canonical-revision",
    "envoy.node.labels.app.kubernetes.io/name",
};
#define KNOWN_COUNT (ATTRIBUTE_COUNT + NODE_COUNT)
#define RECENT_POSITIONS 64

static const char *
known_name(int index)
{
    return index < ATTRIBUTE_COUNT ? ATTRIBUTE_NAMES[index] : NODE_NAMES[index - ATTRIBUTE_COUNT];
}

static size_t known_sizes[KNOWN_COUNT]; /* strlen of each name, filled at import */

static int
is_name(Span key, int index)
{
    return (size_t)key.size == known_sizes[index] && memcmp(key.data, known_name(index), key.size) == 0;
}

/* The index of a known attribute's key (-1 for any other), trying first the one found at the
   same position in the record before: Envoy writes the same names in the same order. */
static int8_t recent_index[RECENT_POSITIONS];

static int
known_index(Span key, Py_ssize_t position)
{
    int recent = position < RECENT_POSITIONS ? recent_index[position] - 1 : -1;
    if (recent >= 0 && is_name(key, recent)) {
        return recent;
    }
    for (int i = 0; i < KNOWN_COUNT; i++) {
        if (is_name(key, i)) {
            if (position < RECENT_POSITIONS) {
                recent_index[position] = (int8_t)(i + 1);
            }
            return i;
        }
    }
    return -1;
}

/* Whether bytes decode as UTF-8 as Python's strict decoder has it (no overlong forms, no
   surrogates, nothing past U+10FFFF: the Unicode standard's well-formed sequences). */
static int
utf8_valid(Span s)
{
    const uint8_t *p = s.data, *end = s.data + s.size;
    while (p < end) {
        uint64_t word;
        if (end - p >= 8 && (memcpy(&word, p, 8), (word & 0x8080808080808080ULL) == 0)) {
            p += 8; /* eight ASCII bytes */
            continue;
        }
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        int more;
        uint8_t low = 0x80, high = 0xBF; /* the bounds of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            low = c == 0xE0 ? 0xA0 : 0x80;
            high = c == 0xED ? 0x9F : 0xBF;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            low = c == 0xF0 ? 0x90 : 0x80;
            high = c == 0xF4 ? 0x8F : 0xBF;
        }
        else {
            return 0;
        }
        if (end - p <= more || p[1] < low || p[1] > high) {
            return 0;
        }
        for (int i = 2; i <= more; i++) {
            if (p[i] < 0x80 || p[i] > 0xBF) {
                return 0;
            }
        }
        p += more + 1;
    }
    return 1;
}

typedef struct {
    Span values[KNOWN_COUNT]; /* data NULL: not in the record */
    char numbers[KNOWN_COUNT][24]; /* the text of integer values */
} KnownAttributes;

/* An attribute as otlp_logs.strings has it, without making its string: strings as they are,
   integers in decimal; 0 (the Python path) for booleans and doubles, whose text Python writes. */
static int
take_attribute(void *context, Py_ssize_t position, Span key, Span value)
{
    KnownAttributes *known = context;
    int index = known_index(key, position);
    if (index < 0 && !utf8_valid(key)) {
        return 0; /* not a string: protobuf refuses the record */
    }
    int kind;
    Span text;
    uint64_t number;
    if (!any_value(value, &kind, &text, &number) || kind == 2 || kind == 4) {
        return 0; /* or a boolean, a double: their text is Python's to write */
    }
    if (kind == 1 && !utf8_valid(text)) {
        return 0;
    }
    if (index < 0 || kind == 0 || kind == 7) {
        return 1; /* not read here; or no value, or bytes, which strings() skips */
    }
    if (kind == 3) {
        int n = snprintf(known->numbers[index], sizeof known->numbers[index], "%lld", (long long)number);
        text.data = (const uint8_t *)known->numbers[index];
        text.size = n;
    }
    else if (text.data == NULL) {
        text.data = (const uint8_t *)""; /* present, and empty */
    }
    known->values[index] = text; /* a later one replaces it, as in a dict */
    return 1;
}

/* record_entry(raw, start, end, shared) -> (proxy key, log type, encoded entry) | None: what
   otlp_logs.entry_of gives for the record in raw[start:end] with the resource's attributes `shared`
   under its own (a dict of str, holding none of the proxy's), and a key that is the same for two
   records exactly when their proxy's attributes are; None for anything entry() or record() would
   leave to the Python path, and for a record with no envoy.node.id. */
static PyObject *
record_entry(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Span s;
    if (!record_span(args, nargs, 4, &s)) {
        return NULL;
    }
    PyObject *shared = args[3];
    if (!PyDict_CheckExact(shared)) {
        Py_RETURN_NONE;
    }
    KnownAttributes known;
    for (int i = 0; i < KNOWN_COUNT; i++) {
        known.values[i].data = NULL;
        known.values[i].size = 0;
    }
    uint64_t time_unix_nano;
    int walked = walk_record(s, take_attribute, &known, &time_unix_nano);
    if (walked != 1) {
        if (walked < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    Span node_id = known.values[ATTRIBUTE_COUNT];
    if (node_id.size == 0 || (node_id.size == 1 && node_id.data[0] == '-')) {
        Py_RETURN_NONE; /* missing_node, which the Python path raises */
    }
    Span a[ATTRIBUTE_COUNT];
    int tcp = 0;
    for (int i = 0; i < ATTRIBUTE_COUNT; i++) {
        Span value = known.values[i];
        if (value.data == NULL && PyDict_GET_SIZE(shared)) {
            int got = attribute(shared, i, &a[i]);
            if (got <= 0) {
                if (got < 0) {
                    return NULL;
                }
                Py_RETURN_NONE;
            }
            if (i == A_LOG_TYPE) {
                PyObject *raw_type = PyDict_GetItemWithError(shared, attribute_keys[A_LOG_TYPE]);
                tcp = raw_type != NULL && PyUnicode_CompareWithASCIIString(raw_type, "tcp") == 0;
            }
            continue;
        }
        if (i == A_LOG_TYPE) {
            tcp = value.size == 3 && memcmp(value.data, "tcp", 3) == 0;
        }
        a[i].data = value.data ? value.data : (const uint8_t *)"";
        a[i].size = value.size == 1 && value.data[0] == '-' ? 0 : value.size;
    }
    PyObject *found = encode_entry(a, tcp, time_unix_nano);
    if (found == NULL || found == Py_None) {
        return found;
    }
    Buffer key = {NULL, 0, 0, 0};
    for (int i = ATTRIBUTE_COUNT; i < KNOWN_COUNT; i++) {
        put_len_field(&key, 1, known.values[i].data, known.values[i].size);
    }
    PyObject *out = NULL;
    if (!key.failed) {
        PyObject *encoded_key = PyBytes_FromStringAndSize((const char *)key.data, key.size);
        if (encoded_key != NULL) {
            out = PyTuple_Pack(3, encoded_key, PyTuple_GET_ITEM(found, 0), PyTuple_GET_ITEM(found, 1));
            Py_DECREF(encoded_key);
        }
    }
    PyMem_Free(key.data);
    Py_DECREF(found);
    return out;
}

/* A tuple of the names, as str. */
static PyObject *
name_tuple(const char *const *names, Py_ssize_t count)
{
    PyObject *tuple = PyTuple_New(count);
    for (Py_ssize_t i = 0; tuple != NULL && i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) {
            Py_CLEAR(tuple);
            break;
        }
        PyTuple_SET_ITEM(tuple, i, name);
    }
    return tuple;
}

static PyObject *
node_attributes(PyObject *module, PyObject *unused)
{
    return name_tuple(NODE_NAMES, NODE_COUNT);
}

/* ---- the module -------------------------------------------------------------------------------- */

static PyObject *
interned(const char *text)
{
    return PyUnicode_InternFromString(text);
}

static int
table(PyObject *sequence, PyObject **out, Py_ssize_t size, const char *what)
{
    if (!PyTuple_Check(sequence) || PyTuple_GET_SIZE(sequence) != size) {
        PyErr_Format(PyExc_ValueError, "configure(): %s must be a tuple of %zd", what, size);
        return 0;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PyTuple_GET_ITEM(sequence, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_ValueError, "configure(): %s holds a non-string", what);
            return 0;
        }
        Py_XSETREF(out[i], Py_NewRef(item));
    }
    return 1;
}

/* configure(Entry, SocketAddr, AnyValue, method_names, http_versions, flag_codes, access_log_types):
   the types and tables of normalize.py, which stay their one definition. */
static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "configure() takes 7 arguments");
        return NULL;
    }
    if (!table(args[3], methods, 10, "method_names") || !table(args[4], http_versions, 5, "http_versions") ||
        !table(args[5], flag_codes + 1, 27, "flag_codes") ||
        !table(args[6], log_type_names, 14, "access_log_types")) {
        return NULL;
    }
    if (!find_setters(args[0])) {
        return NULL;
    }
    Py_XSETREF(entry_type, Py_NewRef(args[0]));
    Py_XSETREF(socket_addr_type, Py_NewRef(args[1]));
    Py_XSETREF(any_value_type, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *
fields(PyObject *module, PyObject *unused)
{
    return name_tuple(FIELD_NAMES, ENTRY_FIELDS);
}

static PyObject *
record_attributes(PyObject *module, PyObject *unused)
{
    PyObject *names = PyTuple_New(ATTRIBUTE_COUNT);
    for (Py_ssize_t i = 0; names != NULL && i < ATTRIBUTE_COUNT; i++) {
        PyTuple_SET_ITEM(names, i, Py_NewRef(attribute_keys[i]));
    }
    return names;
}

static PyMethodDef METHODS[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(encoded, http, api_version, cache) -> Entry | None: the entry, or None for the Python path"},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(Entry, SocketAddr, AnyValue, method_names, http_versions, flag_codes, access_log_types)"},
    {"entry", (PyCFunction)(void (*)(void))entry_of, METH_FASTCALL,
     "entry(attributes, time_unix_nano) -> (log_type, encoded entry) | None: a record's ALS entry, or None"},
    {"record_attributes", record_attributes, METH_NOARGS, "The record attributes entry() reads"},
    {"fields", fields, METH_NOARGS, "The Entry fields decode() fills, in the order it passes them"},
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "record(raw, start, end) -> (attributes, time_unix_nano) | None: an OTLP log record, or None"},
    {"record_entry", (PyCFunction)(void (*)(void))record_entry, METH_FASTCALL,
     "record_entry(raw, start, end, shared) -> (proxy key, log type, entry) | None: a record's ALS entry"},
    {"node_attributes", node_attributes, METH_NOARGS, "The record attributes that name its proxy"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_entries",
    "Envoy's encoded access-log entries read natively (normalize.py holds the Python twin)", -1, METHODS,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__entries(void)
{
    static const char *ADDRESS_NAMES[5] = {
        "downstream_remote_address", "downstream_direct_remote_address", "downstream_local_address",
        "upstream_remote_address",   "upstream_local_address",
    };
    if (str_http == NULL) {
        if ((str_http = interned("http")) == NULL || (str_grpc = interned("grpc")) == NULL ||
            (str_tcp = interned("tcp")) == NULL || (str_empty = interned("")) == NULL ||
            (str_addresses = interned("addresses")) == NULL || (str_decode = interned("decode")) == NULL ||
            (str_max = interned("max_addresses")) == NULL ||
            (str_content_type = interned("content-type")) == NULL ||
            (str_application_grpc = interned("application/grpc")) == NULL) {
            return NULL;
        }
        for (int i = 0; i < 5; i++) {
            if ((address_names[i] = interned(ADDRESS_NAMES[i])) == NULL) {
                return NULL;
            }
        }
        for (int i = 0; i < ATTRIBUTE_COUNT; i++) {
            if ((attribute_keys[i] = interned(ATTRIBUTE_NAMES[i])) == NULL) {
                return NULL;
            }
        }
        for (int i = 0; i < KNOWN_COUNT; i++) {
            known_sizes[i] = strlen(known_name(i));
        }
    }
    return PyModule_Create(&MODULE);
}
