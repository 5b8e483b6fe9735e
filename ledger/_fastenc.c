/* kvledger.ledger._fastenc: the writer's per-event work (check, canonical JSON, chain hash) in C.
 *
 * ``mapper.encode_group`` is the definition; this module does exactly what its Python loop does
 * for the events whose shape is plain (exact ints, strs, bools, lists of ints or strs, a known
 * kind), and stops at the first event that is not, so that the Python loop handles that one
 * (an invalid event's SchemaError, a json-typed attribute, a huge int, a lone surrogate). A
 * hypothesis test holds both paths byte-equal (tests/ledger/test_fastenc.py).
 *
 * What it returns are the group's Arrow columns as raw buffers (int64 values, int32 offsets,
 * UTF-8 data, a validity bitmap): the store wraps them without building a Python object per
 * event. The chain hash is BLAKE2b (RFC 7693) with a 16-byte digest, optionally keyed: the same
 * function as ``hashlib.blake2b(digest_size=16, key=key)``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <marshal.h>
#include <structmember.h> /* PyMemberDef: the fold's slot offsets (_fastfold.c) */
#undef T_INT /* structmember's type codes: the kind table below has a T_INT and a T_BOOL */
#undef T_BOOL
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* -- BLAKE2b (RFC 7693) ------------------------------------------------------------------------ */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

#define B2_G(a, b, c, d, x, y)          \
    do {                                \
        a = a + b + (x);                \
        d = rotr64(d ^ a, 32);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 24);          \
        a = a + b + (y);                \
        d = rotr64(d ^ a, 16);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 63);          \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t *block, uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t; /* the counter's high word stays 0: no message is 2^64 bytes long */
    if (last) v[14] = ~v[14];
    /* Rounds written out with constant indices: the message words stay in registers (a loop
     * over the sigma table ran at a third of the speed). */
#define B2_ROUND(r)                                                            \
    do {                                                                       \
        B2_G(v[0], v[4], v[8], v[12], m[B2_SIGMA[r][0]], m[B2_SIGMA[r][1]]);   \
        B2_G(v[1], v[5], v[9], v[13], m[B2_SIGMA[r][2]], m[B2_SIGMA[r][3]]);   \
        B2_G(v[2], v[6], v[10], v[14], m[B2_SIGMA[r][4]], m[B2_SIGMA[r][5]]);  \
        B2_G(v[3], v[7], v[11], v[15], m[B2_SIGMA[r][6]], m[B2_SIGMA[r][7]]);  \
        B2_G(v[0], v[5], v[10], v[15], m[B2_SIGMA[r][8]], m[B2_SIGMA[r][9]]);  \
        B2_G(v[1], v[6], v[11], v[12], m[B2_SIGMA[r][10]], m[B2_SIGMA[r][11]]); \
        B2_G(v[2], v[7], v[8], v[13], m[B2_SIGMA[r][12]], m[B2_SIGMA[r][13]]);  \
        B2_G(v[3], v[4], v[9], v[14], m[B2_SIGMA[r][14]], m[B2_SIGMA[r][15]]);  \
    } while (0)
    B2_ROUND(0);
    B2_ROUND(1);
    B2_ROUND(2);
    B2_ROUND(3);
    B2_ROUND(4);
    B2_ROUND(5);
    B2_ROUND(6);
    B2_ROUND(7);
    B2_ROUND(8);
    B2_ROUND(9);
    B2_ROUND(10);
    B2_ROUND(11);
#undef B2_ROUND
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The state after the parameter block (and the key block, when keyed): copied per event. */
typedef struct {
    uint64_t h[8];
    uint64_t t;
} b2_start;

static void b2_init(b2_start *st, const uint8_t *key, size_t keylen, size_t outlen) {
    memcpy(st->h, B2_IV, sizeof st->h);
    st->h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    st->t = 0;
    if (keylen) {
        uint8_t block[128] = {0};
        memcpy(block, key, keylen);
        st->t = 128;
        /* Never the last block: every message hashed here is non-empty. */
        b2_compress(st->h, block, st->t, 0);
    }
}

static const char HEX[] = "0123456789abcdef";

/* BLAKE2b of msg[0:n] (n > 0) from ``st``; the 16-byte digest into out. */
static void b2_digest16(const b2_start *st, const uint8_t *msg, size_t n, uint8_t out[16]) {
    uint64_t h[8];
    uint64_t t = st->t;
    memcpy(h, st->h, sizeof h);
    while (n > 128) {
        t += 128;
        b2_compress(h, msg, t, 0);
        msg += 128;
        n -= 128;
    }
    uint8_t block[128] = {0};
    memcpy(block, msg, n);
    t += n;
    b2_compress(h, block, t, 1);
    for (int i = 0; i < 16; i++) out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

/* The same digest written as 32 hex chars. */
static void b2_hex16(const b2_start *st, const uint8_t *msg, size_t n, char *out) {
    uint8_t d[16];
    b2_digest16(st, msg, n, d);
    for (int i = 0; i < 16; i++) {
        out[2 * i] = HEX[d[i] >> 4];
        out[2 * i + 1] = HEX[d[i] & 15];
    }
}

/* -- growable byte buffers --------------------------------------------------------------------- */
/* Out of memory: MemoryError where this thread holds the GIL; where it does not (encode_marshal
 * encodes its frames without it), noted here and raised once the caller has it back. Buffers
 * and back-reference tables use the raw allocator (malloc), which needs no GIL. */
static _Thread_local int no_memory_pending = 0;

static void no_memory(void) {
    if (PyGILState_Check())
        PyErr_NoMemory();
    else
        no_memory_pending = 1;
}

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} buf;

static int buf_grow(buf *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            no_memory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_RawRealloc(b->p, (size_t)cap);
    if (!p) {
        no_memory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf *b, const void *s, Py_ssize_t n) {
    if (buf_grow(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    return 0;
}

static inline int buf_putc(buf *b, char c) {
    if (buf_grow(b, 1) < 0) return -1;
    b->p[b->n++] = c;
    return 0;
}

static int buf_put_i64(buf *b, long long x) {
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) *--p = '-';
    return buf_put(b, p, end - p);
}

static inline int buf_put_i32(buf *b, int32_t x) { return buf_put(b, &x, 4); }

/* json's encode_basestring (ensure_ascii=False) on UTF-8 bytes: only '"', '\\' and the
 * control characters are escaped; every other byte, non-ASCII included, is kept. */
static int buf_put_json_str(buf *b, const char *s, Py_ssize_t n) {
    if (buf_grow(b, n + 2) < 0) return -1;
    b->p[b->n++] = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            if (buf_putc(b, (char)c) < 0) return -1;
            continue;
        }
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        int len = 2;
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = HEX[c >> 4];
                esc[5] = HEX[c & 15];
                len = 6;
        }
        if (buf_put(b, esc, len) < 0) return -1;
    }
    return buf_putc(b, '"');
}

/* -- the kind table (from mapper, once) -------------------------------------------------------- */
enum { T_INT, T_STR, T_BOOL, T_INTS, T_STRS, T_OTHER };

typedef struct {
    PyObject *name; /* the attribute name (a str; strong reference) */
    char *key;      /* '"name":' as the encoder writes it */
    Py_ssize_t keylen;
    const char *raw; /* the name's UTF-8 (owned by ``name``) */
    Py_ssize_t rawlen;
    int type, optional;
} attr_spec;

typedef struct {
    int scoped, supported, nattrs;
    attr_spec *attrs; /* sorted by name: the canonical key order */
    PyObject *name;   /* the kind (a str; strong reference) */
    const char *raw;  /* its UTF-8 (owned by ``name``) */
    Py_ssize_t rawlen;
} kind_spec;

static PyObject *kind_index = NULL; /* kind str -> int index into kinds */
static unsigned long kinds_generation = 0; /* set_kinds calls: what was set up for a table */
static kind_spec *kinds = NULL;
static Py_ssize_t nkinds = 0;

/* Kinds by their UTF-8 bytes (the marshal reader has bytes, not str objects): open addressing,
 * a power-of-two table of kind indexes + 1 (0: empty). */
static Py_ssize_t *kind_slots = NULL;
static size_t kind_mask = 0;

static inline size_t fnv1a(const char *s, Py_ssize_t n) {
    size_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static const kind_spec *kind_by_bytes(const char *s, Py_ssize_t n) {
    for (size_t h = fnv1a(s, n) & kind_mask;; h = (h + 1) & kind_mask) {
        Py_ssize_t k = kind_slots[h];
        if (!k) return NULL;
        const kind_spec *ks = &kinds[k - 1];
        if (ks->rawlen == n && memcmp(ks->raw, s, (size_t)n) == 0) return ks;
    }
}

static void free_kinds(void) {
    PyMem_Free(kind_slots);
    kind_slots = NULL;
    kind_mask = 0;
    for (Py_ssize_t i = 0; i < nkinds; i++) {
        Py_XDECREF(kinds[i].name);
        for (int j = 0; j < kinds[i].nattrs; j++) {
            Py_XDECREF(kinds[i].attrs[j].name);
            PyMem_RawFree(kinds[i].attrs[j].key);
        }
        PyMem_Free(kinds[i].attrs);
    }
    PyMem_Free(kinds);
    kinds = NULL;
    nkinds = 0;
    Py_CLEAR(kind_index);
}

static int type_code(PyObject *s) {
    static const char *names[] = {"int", "str", "bool", "ints", "strs"};
    for (int i = 0; i < 5; i++)
        if (PyUnicode_CompareWithASCIIString(s, names[i]) == 0) return i;
    return T_OTHER;
}

/* set_kinds({kind: (request_scoped, ((name, type, optional), ...) sorted by name)}) */
static PyObject *set_kinds(PyObject *self, PyObject *table) {
    (void)self;
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "set_kinds takes a dict");
        return NULL;
    }
    free_kinds();
    kinds_generation++;
    Py_ssize_t n = PyDict_Size(table);
    kinds = PyMem_Calloc((size_t)(n ? n : 1), sizeof(kind_spec));
    kind_index = PyDict_New();
    if (!kinds || !kind_index) goto fail;
    Py_ssize_t pos = 0, i = 0;
    PyObject *kind, *spec;
    while (PyDict_Next(table, &pos, &kind, &spec)) {
        PyObject *attrs;
        int scoped;
        if (!PyUnicode_Check(kind) || !PyArg_ParseTuple(spec, "pO!", &scoped, &PyTuple_Type, &attrs))
            goto bad;
        kind_spec *k = &kinds[i];
        nkinds = i + 1;
        Py_INCREF(kind);
        k->name = kind;
        k->raw = PyUnicode_AsUTF8AndSize(kind, &k->rawlen);
        if (!k->raw) goto fail;
        k->scoped = scoped;
        k->supported = 1;
        k->nattrs = (int)PyTuple_GET_SIZE(attrs);
        k->attrs = PyMem_Calloc((size_t)(k->nattrs ? k->nattrs : 1), sizeof(attr_spec));
        if (!k->attrs) goto fail;
        for (int j = 0; j < k->nattrs; j++) {
            PyObject *name, *typ;
            int optional;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(attrs, j), "O!O!p", &PyUnicode_Type, &name,
                                  &PyUnicode_Type, &typ, &optional))
                goto bad;
            attr_spec *a = &k->attrs[j];
            Py_INCREF(name);
            a->name = name;
            a->type = type_code(typ);
            a->optional = optional;
            a->raw = PyUnicode_AsUTF8AndSize(name, &a->rawlen);
            if (!a->raw) goto fail;
            if (a->type == T_OTHER) k->supported = 0;
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(name, &len);
            if (!s) goto fail;
            buf kb = {0};
            if (buf_put_json_str(&kb, s, len) < 0 || buf_putc(&kb, ':') < 0) {
                PyMem_RawFree(kb.p);
                goto fail;
            }
            a->key = kb.p;
            a->keylen = kb.n;
        }
        PyObject *idx = PyLong_FromSsize_t(i);
        if (!idx || PyDict_SetItem(kind_index, kind, idx) < 0) {
            Py_XDECREF(idx);
            goto fail;
        }
        Py_DECREF(idx);
        i++;
    }
    size_t size = 16;
    while (size < 4 * (size_t)nkinds) size *= 2;
    kind_slots = PyMem_Calloc(size, sizeof(Py_ssize_t));
    if (!kind_slots) goto fail;
    kind_mask = size - 1;
    for (Py_ssize_t j = 0; j < nkinds; j++) {
        size_t h = fnv1a(kinds[j].raw, kinds[j].rawlen) & kind_mask;
        while (kind_slots[h]) h = (h + 1) & kind_mask;
        kind_slots[h] = j + 1;
    }
    Py_RETURN_NONE;
bad:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "set_kinds: malformed kind table");
fail:
    free_kinds();
    return NULL;
}

/* -- one event's attributes -> canonical JSON --------------------------------------------------- */
#define STOP 1 /* not a plain event: the Python loop handles it */

static int put_value(buf *b, PyObject *v, int type) {
    switch (type) {
        case T_INT: {
            if (!PyLong_CheckExact(v)) return STOP;
            int ovf;
            long long x = PyLong_AsLongLongAndOverflow(v, &ovf);
            if (ovf) return STOP;
            if (x == -1 && PyErr_Occurred()) return -1;
            return buf_put_i64(b, x);
        }
        case T_STR: {
            if (!PyUnicode_CheckExact(v)) return STOP;
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(v, &len);
            if (!s) {
                PyErr_Clear(); /* a lone surrogate: Python raises its own error */
                return STOP;
            }
            return buf_put_json_str(b, s, len);
        }
        case T_BOOL:
            if (v == Py_True) return buf_put(b, "true", 4);
            if (v == Py_False) return buf_put(b, "false", 5);
            return STOP;
        case T_INTS:
        case T_STRS: {
            if (!PyList_CheckExact(v) && !PyTuple_CheckExact(v)) return STOP;
            if (buf_putc(b, '[') < 0) return -1;
            /* Element by element with a fresh size each time: the list is someone else's. */
            for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(v); i++) {
                PyObject *e = PySequence_Fast_GET_ITEM(v, i);
                if (i && buf_putc(b, ',') < 0) return -1;
                Py_INCREF(e);
                int rc = put_value(b, e, type == T_INTS ? T_INT : T_STR);
                Py_DECREF(e);
                if (rc) return rc;
            }
            return buf_putc(b, ']');
        }
    }
    return STOP;
}

static int put_attrs(buf *b, const kind_spec *k, PyObject *attrs) {
    Py_ssize_t found = 0;
    int first = 1;
    if (buf_putc(b, '{') < 0) return -1;
    for (int j = 0; j < k->nattrs; j++) {
        const attr_spec *a = &k->attrs[j];
        PyObject *v = PyDict_GetItemWithError(attrs, a->name);
        if (!v) {
            if (PyErr_Occurred()) return -1;
            if (!a->optional) return STOP;
            continue;
        }
        found++;
        if (v == Py_None) {
            if (!a->optional) return STOP;
            continue; /* stored without its None-valued attributes */
        }
        if (!first && buf_putc(b, ',') < 0) return -1;
        first = 0;
        if (buf_put(b, a->key, a->keylen) < 0) return -1;
        Py_INCREF(v);
        int rc = put_value(b, v, a->type);
        Py_DECREF(v);
        if (rc) return rc;
    }
    if (found != PyDict_GET_SIZE(attrs)) return STOP; /* an attribute the kind does not have */
    return buf_putc(b, '}');
}

/* -- the group ---------------------------------------------------------------------------------- */
typedef struct {
    buf ts, kind_off, kind, rid_valid, rid_off, rid, attrs_off, attrs, hash, msg;
} columns;

static void columns_free(columns *c) {
    buf *all[] = {&c->ts, &c->kind_off, &c->kind, &c->rid_valid, &c->rid_off, &c->rid,
                  &c->attrs_off, &c->attrs, &c->hash, &c->msg};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) PyMem_RawFree(all[i]->p);
}

static PyObject *as_bytes(const buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", b->n); }

/* The rest of one event once its attrs are in ``c->attrs`` from ``mark`` on: the chain hash and
 * every other column. STOP (with the attrs taken back) past 32-bit offsets. */
static int put_row(columns *c, long long seq, const b2_start *st, const char *prev,
                   const char *mid, Py_ssize_t midlen, char *hash_out, Py_ssize_t row,
                   int *any_null, long long ts_ns, const char *kind_s, Py_ssize_t kind_len,
                   const char *rid_s, Py_ssize_t rid_len, int scoped, Py_ssize_t mark) {
    if (c->attrs.n > INT32_MAX || c->kind.n + kind_len > INT32_MAX ||
        c->rid.n + rid_len > INT32_MAX) {
        c->attrs.n = mark;
        return STOP; /* beyond 32-bit offsets: the Python path and pyarrow's own checks */
    }
    /* The chain input: prev \x1f stream \x1f seq \x1f ts \x1f kind \x1f rid \x1f attrs */
    buf *m = &c->msg;
    m->n = 0;
    if (buf_put(m, prev, 32) < 0 || buf_put(m, mid, midlen) < 0 || buf_put_i64(m, seq) < 0 ||
        buf_putc(m, '\x1f') < 0 || buf_put_i64(m, ts_ns) < 0 || buf_putc(m, '\x1f') < 0 ||
        buf_put(m, kind_s, kind_len) < 0 || buf_putc(m, '\x1f') < 0 ||
        buf_put(m, rid_s, rid_len) < 0 || buf_putc(m, '\x1f') < 0 ||
        buf_put(m, c->attrs.p + mark, c->attrs.n - mark) < 0)
        return -1;
    b2_hex16(st, (const uint8_t *)m->p, (size_t)m->n, hash_out);
    int64_t ts64 = ts_ns;
    if (buf_put(&c->ts, &ts64, 8) < 0 || buf_put(&c->kind, kind_s, kind_len) < 0 ||
        buf_put_i32(&c->kind_off, (int32_t)c->kind.n) < 0 ||
        buf_put(&c->rid, rid_s, rid_len) < 0 || buf_put_i32(&c->rid_off, (int32_t)c->rid.n) < 0 ||
        buf_put_i32(&c->attrs_off, (int32_t)c->attrs.n) < 0 || buf_put(&c->hash, hash_out, 32) < 0)
        return -1;
    if (row % 8 == 0 && buf_putc(&c->rid_valid, 0) < 0) return -1;
    if (scoped)
        c->rid_valid.p[row / 8] |= (char)(1 << (row % 8));
    else
        *any_null = 1;
    return 0;
}


/* Encode one event into the columns; STOP leaves them as they were. */
static int encode_one(columns *c, PyObject *item, long long seq, const b2_start *st,
                      const char *prev, const char *mid, Py_ssize_t midlen, char *hash_out,
                      Py_ssize_t row, int *any_null) {
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 4) return STOP;
    PyObject *ts = PyTuple_GET_ITEM(item, 0), *kind = PyTuple_GET_ITEM(item, 1),
             *rid = PyTuple_GET_ITEM(item, 2), *attrs = PyTuple_GET_ITEM(item, 3);
    if (!PyLong_CheckExact(ts) || !PyUnicode_CheckExact(kind) || !PyDict_CheckExact(attrs))
        return STOP;
    int ovf;
    long long ts_ns = PyLong_AsLongLongAndOverflow(ts, &ovf);
    if (ovf) return STOP;
    if (ts_ns == -1 && PyErr_Occurred()) return -1;
    PyObject *idx = PyDict_GetItemWithError(kind_index, kind);
    if (!idx) return PyErr_Occurred() ? -1 : STOP;
    const kind_spec *k = &kinds[PyLong_AsSsize_t(idx)];
    if (!k->supported) return STOP;
    const char *rid_s = "";
    Py_ssize_t rid_len = 0;
    if (k->scoped) {
        if (!PyUnicode_CheckExact(rid)) return STOP;
        rid_s = PyUnicode_AsUTF8AndSize(rid, &rid_len);
        if (!rid_s) {
            PyErr_Clear();
            return STOP;
        }
    } else if (rid != Py_None) {
        return STOP;
    }
    Py_ssize_t kind_len;
    const char *kind_s = PyUnicode_AsUTF8AndSize(kind, &kind_len);
    if (!kind_s) {
        PyErr_Clear();
        return STOP;
    }
    Py_ssize_t mark = c->attrs.n;
    int rc = put_attrs(&c->attrs, k, attrs);
    if (rc) {
        c->attrs.n = mark;
        return rc;
    }
    return put_row(c, seq, st, prev, mid, midlen, hash_out, row, any_null, ts_ns, kind_s,
                   kind_len, rid_s, rid_len, k->scoped, mark);
}

/* -- a group's state, shared by ``encode`` and ``encode_marshal`` ------------------------------- */
typedef struct {
    b2_start st;
    columns c;
    char prev[32], hash[32];
    buf mid; /* \x1f stream \x1f */
    int any_null;
    long long seq; /* the last encoded event's seq */
} group;

static int group_begin(group *g, PyObject *stream, long long seq, PyObject *prev_obj,
                       PyObject *key) {
    memset(g, 0, sizeof *g);
    if (!kind_index) {
        PyErr_SetString(PyExc_RuntimeError, "_fastenc.set_kinds was not called");
        return -1;
    }
    if (PyBytes_GET_SIZE(key) > 64) {
        PyErr_SetString(PyExc_ValueError, "a BLAKE2b key is at most 64 bytes");
        return -1;
    }
    Py_ssize_t prev_len, stream_len;
    const char *prev0 = PyUnicode_AsUTF8AndSize(prev_obj, &prev_len);
    const char *stream_s = prev0 ? PyUnicode_AsUTF8AndSize(stream, &stream_len) : NULL;
    if (!stream_s) return -1;
    if (prev_len != 32) {
        PyErr_SetString(PyExc_ValueError, "prev_hash is not a 32-character hash");
        return -1;
    }
    b2_init(&g->st, (const uint8_t *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key), 16);
    memcpy(g->prev, prev0, 32);
    g->seq = seq;
    if (buf_putc(&g->mid, '\x1f') < 0 || buf_put(&g->mid, stream_s, stream_len) < 0 ||
        buf_putc(&g->mid, '\x1f') < 0 || buf_put_i32(&g->c.kind_off, 0) < 0 ||
        buf_put_i32(&g->c.rid_off, 0) < 0 || buf_put_i32(&g->c.attrs_off, 0) < 0)
        return -1;
    return 0;
}

static void group_free(group *g) {
    PyMem_RawFree(g->mid.p);
    columns_free(&g->c);
}

/* The encoded event became the chain's head. */
static inline void group_advance(group *g) {
    g->seq += 1;
    memcpy(g->prev, g->hash, 32);
}

static PyObject *group_result(group *g, Py_ssize_t stop) {
    columns *c = &g->c;
    PyObject *valid = g->any_null ? as_bytes(&c->rid_valid) : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("nLs#NNNNNNNNN", stop, g->seq, g->prev, (Py_ssize_t)32,
                         as_bytes(&c->ts), as_bytes(&c->kind_off), as_bytes(&c->kind), valid,
                         as_bytes(&c->rid_off), as_bytes(&c->rid), as_bytes(&c->attrs_off),
                         as_bytes(&c->attrs), as_bytes(&c->hash));
}

/* encode(stream, seq, prev_hash, items, start, key) -> (stop, seq, prev_hash, ts, kind_off, kind,
 *   rid_valid | None, rid_off, rid, attrs_off, attrs, hash)
 * Items from ``start`` on, up to the first one that is not plain (``stop``; len(items) if none).
 * ``seq`` is the last seq before the first item; the events get seq + 1, seq + 2, ...; the
 * returned seq and prev_hash are those of the last encoded event. */
static PyObject *encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream, *prev_obj, *items_in, *key;
    long long seq;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!LO!OnO!", &PyUnicode_Type, &stream, &seq, &PyUnicode_Type,
                          &prev_obj, &items_in, &start, &PyBytes_Type, &key))
        return NULL;
    group g;
    PyObject *result = NULL, *items = NULL;
    if (group_begin(&g, stream, seq, prev_obj, key) < 0) goto done;
    items = PySequence_Fast(items_in, "items must be a sequence");
    if (!items) goto done;
    Py_ssize_t i = start < 0 ? 0 : start, row = 0;
    for (; i < PySequence_Fast_GET_SIZE(items); i++, row++) {
        PyObject *item = PySequence_Fast_GET_ITEM(items, i);
        Py_INCREF(item);
        int rc = encode_one(&g.c, item, g.seq + 1, &g.st, g.prev, g.mid.p, g.mid.n, g.hash, row,
                            &g.any_null);
        Py_DECREF(item);
        if (rc < 0) goto done;
        if (rc == STOP) break;
        group_advance(&g);
    }
    result = group_result(&g, i);
done:
    group_free(&g);
    Py_XDECREF(items);
    return result;
}

/* -- straight from the writer's frames: a reader of marshal's format ------------------------------
 * The parent ships ``marshal.dumps(list of (ts_ns, kind, request_id, attrs))``; loading that
 * into Python objects cost the writer as much as encoding them did. ``encode_marshal`` reads the
 * bytes in place (marshal version 4: the types ``marshal.dumps`` writes for ints, strs, None,
 * bools, tuples, lists, dicts, and its back-references) and encodes plain events exactly as
 * ``encode`` does; at the first event that is not plain, or anything it does not read, it stops
 * and the caller hands the rest of the frame to ``marshal.loads`` and the object path. */
enum { M_NULL, M_NONE, M_TRUE, M_FALSE, M_INT, M_STR, M_TUPLE, M_LIST, M_DICT, M_OTHER };
#define M_FLAG_REF 0x80
#define M_DEPTH_MAX 8

typedef struct {
    const uint8_t *start, *end;
    const uint8_t **refs; /* where each back-referable object starts, in marshal's order */
    Py_ssize_t nrefs, cap;
} mframe;

typedef struct {
    int t;
    int big;          /* M_INT: beyond int64 */
    long long i;      /* M_INT */
    const char *s;    /* M_STR: UTF-8 bytes */
    Py_ssize_t len;   /* M_STR: bytes; M_TUPLE/M_LIST: items */
    int not_plain;    /* M_STR: not plain text (``m_not_plain``): the Python path's */
    const uint8_t *body; /* M_TUPLE/M_LIST/M_DICT: the first item */
} mval;

static inline int m_u32(const uint8_t **p, const uint8_t *end, uint32_t *out) {
    if (end - *p < 4) return -1;
    *out = (uint32_t)(*p)[0] | ((uint32_t)(*p)[1] << 8) | ((uint32_t)(*p)[2] << 16) |
           ((uint32_t)(*p)[3] << 24);
    *p += 4;
    return 0;
}

/* Whether ``s`` is not plain text as ``str.encode()`` gives it: ``ascii`` bytes with the top bit
 * set (marshal's one-byte string types hold ASCII only), or UTF-8 that is invalid or holds a
 * surrogate (marshal writes lone surrogates "surrogatepass"). Such a string is the Python
 * path's (it raises, or decodes what marshal would). */
static int m_not_plain(const char *s, Py_ssize_t n, int ascii) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (ascii) return 1;
        int len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) { len = 3; lo = 0xA0; }
        else if (c == 0xED) { len = 3; hi = 0x9F; } /* no surrogates */
        else if (c >= 0xE1 && c <= 0xEF) len = 3;
        else if (c == 0xF0) { len = 4; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) { len = 4; hi = 0x8F; }
        else return 1;
        if (end - p < len || p[1] < lo || p[1] > hi) return 1;
        for (int k = 2; k < len; k++)
            if ((p[k] & 0xC0) != 0x80) return 1;
        p += len;
    }
    return 0;
}

/* Note where a back-referable object starts (-1: out of memory, an exception set). */
static int m_register(mframe *f, const uint8_t *at) {
    if (f->nrefs == f->cap) {
        Py_ssize_t cap = f->cap ? 2 * f->cap : 64;
        const uint8_t **r = PyMem_RawRealloc(f->refs, (size_t)cap * sizeof *r);
        if (!r) {
            no_memory();
            return -1;
        }
        f->refs = r;
        f->cap = cap;
    }
    f->refs[f->nrefs++] = at;
    return 0;
}

/* Read one object at *p (advancing past it), registering back-references when ``reg``. -1: not
 * something this reader takes (the caller stops there); memory errors set an exception. */
static int m_read(mframe *f, const uint8_t **p, mval *v, int reg, int depth) {
    const uint8_t *end = f->end, *at = *p;
    if (depth > M_DEPTH_MAX || at >= end) return -1;
    int code = *at & ~M_FLAG_REF, flag = *at & M_FLAG_REF;
    *p = at + 1;
    if (code == 'r') {
        uint32_t idx;
        if (m_u32(p, end, &idx) < 0 || idx >= (uint32_t)f->nrefs) return -1;
        const uint8_t *q = f->refs[idx];
        return m_read(f, &q, v, 0, depth + 1); /* read again where it was, registering nothing */
    }
    if (flag && reg && m_register(f, at) < 0) return -2;
    memset(v, 0, sizeof *v);
    uint32_t n;
    switch (code) {
        case '0': v->t = M_NULL; return 0;
        case 'N': v->t = M_NONE; return 0;
        case 'T': v->t = M_TRUE; return 0;
        case 'F': v->t = M_FALSE; return 0;
        case 'i':
            if (m_u32(p, end, &n) < 0) return -1;
            v->t = M_INT;
            v->i = (int32_t)n;
            return 0;
        case 'l': {
            if (m_u32(p, end, &n) < 0) return -1;
            int32_t nd = (int32_t)n;
            uint32_t digits = nd < 0 ? 0U - (uint32_t)nd : (uint32_t)nd;
            if ((uint32_t)(end - *p) / 2 < digits) return -1;
            unsigned __int128 x = 0;
            for (uint32_t k = 0; k < digits; k++) {
                unsigned d = (unsigned)(*p)[2 * k] | ((unsigned)(*p)[2 * k + 1] << 8);
                if (d >= (1U << 15)) return -1;
                if (k < 8) x |= (unsigned __int128)d << (15 * k);
                else if (d) v->big = 1;
            }
            *p += 2 * (size_t)digits;
            v->t = M_INT;
            if (digits > 8 || x > ((unsigned __int128)1 << 63) ||
                (nd > 0 && x == ((unsigned __int128)1 << 63)))
                v->big = 1;
            else
                v->i = nd < 0 ? (long long)(0ULL - (unsigned long long)x) : (long long)x;
            return 0;
        }
        case 'z':
        case 'Z':
            if (*p >= end) return -1;
            n = **p;
            *p += 1;
            goto str;
        case 'a':
        case 'A':
        case 'u':
        case 't':
            if (m_u32(p, end, &n) < 0) return -1;
        str:
            if ((uint32_t)(end - *p) < n) return -1;
            v->t = M_STR;
            v->s = (const char *)*p;
            v->len = n;
            v->not_plain = m_not_plain(v->s, v->len, code != 'u' && code != 't');
            *p += n;
            return 0;
        case ')':
            if (*p >= end) return -1;
            n = **p;
            *p += 1;
            v->t = M_TUPLE;
            goto seq;
        case '(':
        case '[':
            if (m_u32(p, end, &n) < 0) return -1;
            v->t = code == '(' ? M_TUPLE : M_LIST;
        seq:
            v->len = n;
            v->body = *p;
            for (uint32_t k = 0; k < n; k++) {
                mval e;
                int rc = m_read(f, p, &e, reg, depth + 1);
                if (rc < 0) return rc;
                if (e.t == M_NULL) return -1;
            }
            return 0;
        case '{':
            v->t = M_DICT;
            v->body = *p;
            for (;;) {
                mval k, e;
                int rc = m_read(f, p, &k, reg, depth + 1);
                if (rc < 0) return rc;
                if (k.t == M_NULL) return 0;
                rc = m_read(f, p, &e, reg, depth + 1);
                if (rc < 0) return rc;
                if (e.t == M_NULL) return -1;
            }
    }
    return -1; /* floats, bytes, sets, code...: not a plain event's; the Python path reads it */
}

/* Read again an object already read once (its back-references registered). */
static inline int m_reread(mframe *f, const uint8_t *at, mval *v) {
    const uint8_t *q = at;
    return m_read(f, &q, v, 0, 0);
}

static int m_put_value(mframe *f, buf *b, const mval *v, int type) {
    switch (type) {
        case T_INT:
            if (v->t != M_INT || v->big) return STOP;
            return buf_put_i64(b, v->i);
        case T_STR:
            if (v->t != M_STR || v->not_plain) return STOP;
            return buf_put_json_str(b, v->s, v->len);
        case T_BOOL:
            if (v->t == M_TRUE) return buf_put(b, "true", 4);
            if (v->t == M_FALSE) return buf_put(b, "false", 5);
            return STOP;
        case T_INTS:
        case T_STRS: {
            if (v->t != M_LIST && v->t != M_TUPLE) return STOP;
            if (buf_putc(b, '[') < 0) return -1;
            const uint8_t *q = v->body;
            for (Py_ssize_t k = 0; k < v->len; k++) {
                mval e;
                int rc = m_read(f, &q, &e, 0, 1);
                if (rc == -2) return -1;
                if (rc < 0) return STOP;
                if (k && buf_putc(b, ',') < 0) return -1;
                rc = m_put_value(f, b, &e, type == T_INTS ? T_INT : T_STR);
                if (rc) return rc;
            }
            return buf_putc(b, ']');
        }
    }
    return STOP;
}

#define M_ATTRS_MAX 32

/* The dict at *q (its '{' read): keys and where each value starts, read once with their
 * back-references registered; then the values in the kind's key order. */
static int m_put_attrs(mframe *f, buf *b, const kind_spec *k, const uint8_t **q) {
    mval keys[M_ATTRS_MAX];
    const uint8_t *vals[M_ATTRS_MAX];
    int n = 0;
    for (;;) {
        mval key, skip;
        int rc = m_read(f, q, &key, 1, 2);
        if (rc == -2) return -1;
        if (rc < 0) return STOP;
        if (key.t == M_NULL) break;
        if (key.t != M_STR || n == M_ATTRS_MAX) return STOP;
        keys[n] = key;
        vals[n++] = *q;
        rc = m_read(f, q, &skip, 1, 2);
        if (rc == -2) return -1;
        if (rc < 0 || skip.t == M_NULL) return STOP;
    }
    int found = 0, first = 1;
    if (buf_putc(b, '{') < 0) return -1;
    for (int j = 0; j < k->nattrs; j++) {
        const attr_spec *a = &k->attrs[j];
        int at = -1;
        for (int i = 0; i < n; i++)
            if (keys[i].len == a->rawlen && memcmp(keys[i].s, a->raw, (size_t)a->rawlen) == 0) {
                at = i;
                break;
            }
        if (at < 0) {
            if (!a->optional) return STOP;
            continue;
        }
        found++;
        mval v;
        int rc = m_reread(f, vals[at], &v);
        if (rc == -2) return -1;
        if (rc < 0) return STOP;
        if (v.t == M_NONE) {
            if (!a->optional) return STOP;
            continue;
        }
        if (!first && buf_putc(b, ',') < 0) return -1;
        first = 0;
        if (buf_put(b, a->key, a->keylen) < 0) return -1;
        rc = m_put_value(f, b, &v, a->type);
        if (rc) return rc;
    }
    /* A key the kind does not have, or one given twice (a dict never is; a forged frame). */
    if (found != n) return STOP;
    return buf_putc(b, '}');
}

/* One item at *q, read once (registering its back-references) and encoded; *q ends past it.
 * A STOP leaves *q anywhere: the caller hands the rest of the frame to Python. */
static int m_encode_one(mframe *f, group *g, const uint8_t **q, Py_ssize_t row) {
    mval ts, kind, rid;
    const uint8_t *at = *q;
    if (at >= f->end) return STOP;
    int code = *at & ~M_FLAG_REF;
    /* A tuple, read once here (a back-reference to an earlier one, the same tuple emitted
     * twice: rare, and Python's). */
    if (code != ')' && code != '(') return STOP;
    if ((*at & M_FLAG_REF) && m_register(f, at) < 0) return -1;
    uint32_t n;
    *q = at + 1;
    if (code == ')') {
        if (*q >= f->end) return STOP;
        n = **q;
        *q += 1;
    } else if (m_u32(q, f->end, &n) < 0) {
        return STOP;
    }
    if (n != 4) return STOP;
    int rc;
    if ((rc = m_read(f, q, &ts, 1, 1)) < 0 || (rc = m_read(f, q, &kind, 1, 1)) < 0 ||
        (rc = m_read(f, q, &rid, 1, 1)) < 0)
        return rc == -2 ? -1 : STOP;
    if (ts.t != M_INT || ts.big || kind.t != M_STR || kind.not_plain) return STOP;
    if (*q >= f->end || (**q & ~M_FLAG_REF) != '{') return STOP; /* attrs: a dict */
    if ((**q & M_FLAG_REF) && m_register(f, *q) < 0) return -1;
    *q += 1;
    const kind_spec *k = kind_by_bytes(kind.s, kind.len);
    if (!k || !k->supported) return STOP;
    const char *rid_s = "";
    Py_ssize_t rid_len = 0;
    if (k->scoped) {
        if (rid.t != M_STR || rid.not_plain) return STOP;
        rid_s = rid.s;
        rid_len = rid.len;
    } else if (rid.t != M_NONE) {
        return STOP;
    }
    columns *c = &g->c;
    Py_ssize_t mark = c->attrs.n;
    rc = m_put_attrs(f, &c->attrs, k, q);
    if (rc) {
        c->attrs.n = mark;
        return rc;
    }
    return put_row(c, g->seq + 1, &g->st, g->prev, g->mid.p, g->mid.n, g->hash, row,
                   &g->any_null, ts.i, kind.s, kind.len, rid_s, rid_len, k->scoped, mark);
}

/* Encode one frame's items into ``g`` from its first on, rows numbered from *row. Returns
 * the index of the item it stopped at (the item count when none), -1 on an error set, or -2
 * when the frame is not a list this reads (nothing of it encoded). */
static Py_ssize_t m_encode_frame(group *g, const uint8_t *start, Py_ssize_t len,
                                 Py_ssize_t *row, Py_ssize_t *count) {
    mframe f = {start, start + len, NULL, 0, 0};
    const uint8_t *q = f.start;
    uint32_t n;
    *count = -1;
    if (q >= f.end || (*q & ~M_FLAG_REF) != '[') return -2;
    int flag = *q & M_FLAG_REF;
    q += 1;
    if (m_u32(&q, f.end, &n) < 0) return -2;
    *count = n;
    if (flag) { /* the list itself takes back-reference 0 */
        f.refs = PyMem_RawMalloc(64 * sizeof *f.refs);
        if (!f.refs) {
            no_memory();
            return -1;
        }
        f.cap = 64;
        f.refs[f.nrefs++] = f.start;
    }
    Py_ssize_t i = 0;
    for (; i < (Py_ssize_t)n; i++) {
        int rc = m_encode_one(&f, g, &q, *row);
        if (rc < 0) {
            i = -1;
            break;
        }
        if (rc == STOP) break;
        group_advance(g);
        *row += 1;
    }
    PyMem_RawFree(f.refs);
    return i;
}

/* encode_marshal(stream, seq, prev_hash, frames, key) -> (frame, stop, count, <encode's result
 *   less its stop>): ``frames`` is a list of ``marshal.dumps(items)``; encoded, as one group,
 *   every item of frames 0 .. frame - 1 and items 0 .. stop - 1 of frame ``frame`` (of its
 *   ``count``; -1 where its list header is not one this reads). frame == len(frames): all. */
static PyObject *encode_marshal(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream, *prev_obj, *frames, *key;
    long long seq;
    if (!PyArg_ParseTuple(args, "O!LO!O!O!", &PyUnicode_Type, &stream, &seq, &PyUnicode_Type,
                          &prev_obj, &PyList_Type, &frames, &PyBytes_Type, &key))
        return NULL;
    group g;
    PyObject *result = NULL, *head = NULL;
    Py_ssize_t fi = 0, stop = 0, count = 0, row = 0;
    /* The frames as a tuple of our own: nothing another thread does to the list reaches them. */
    PyObject *held = PyList_AsTuple(frames);
    if (!held) return NULL;
    Py_ssize_t nf = PyTuple_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < nf; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(held, i))) {
            PyErr_SetString(PyExc_TypeError, "frames must be bytes");
            Py_DECREF(held);
            return NULL;
        }
    }
    if (group_begin(&g, stream, seq, prev_obj, key) < 0) goto done;
    /* Without the GIL, once for the whole take: the frames are immutable bytes objects held
     * here, and the encoding reads them and writes C buffers only (the kind table is set once,
     * at import). The writer's committer thread compresses and commits the previous group
     * meanwhile; holding the GIL through a take (milliseconds) had it wait for the encoder. */
    Py_BEGIN_ALLOW_THREADS
    for (; fi < nf; fi++) {
        PyObject *frame = PyTuple_GET_ITEM(held, fi);
        stop = m_encode_frame(&g, (const uint8_t *)PyBytes_AS_STRING(frame),
                              PyBytes_GET_SIZE(frame), &row, &count);
        if (stop == -1) break;
        if (stop == -2) stop = 0;
        if (stop != count) break;
    }
    Py_END_ALLOW_THREADS
    if (stop == -1) {
        no_memory_pending = 0;
        PyErr_NoMemory();
        goto done;
    }
    if (fi == nf) stop = count = 0;
    head = group_result(&g, row);
    if (head) {
        result = Py_BuildValue("nnnO", fi, stop, count, head);
        Py_DECREF(head);
    }
done:
    group_free(&g);
    Py_DECREF(held);
    return result;
}

/* The 9 slot setters of ``Event`` (its member descriptors, in field order), or -1 with an
 * exception naming ``who``. */
static int event_setters(PyObject *setters, descrsetfunc set[9], const char *who) {
    if (PyTuple_GET_SIZE(setters) != 9) {
        PyErr_Format(PyExc_ValueError, "%s: 9 slot descriptors expected", who);
        return -1;
    }
    for (int j = 0; j < 9; j++) {
        set[j] = Py_TYPE(PyTuple_GET_ITEM(setters, j))->tp_descr_set;
        if (!set[j]) {
            PyErr_Format(PyExc_TypeError, "%s: a setter is not a data descriptor", who);
            return -1;
        }
    }
    return 0;
}

/* events(stream, seq, prev_hash, items, start, etype, setters) -> (stop, seq, prev_hash, events)
 * ``encode``'s check, encoding and chain of items from ``start`` on, up to the first one that is
 * not plain (``stop``), returned as stored ``Event``s instead of Arrow buffers: each built as
 * ``object.__new__(etype)`` and its slots set through ``setters`` (its 9 member descriptors, in
 * field order: stream, seq, ts_ns, kind, request_id, attrs, prev_hash, hash, position), attrs
 * being the emitted dict less its None values (the same dict when it has none). An in-memory
 * ledger (the replayer's) pays this per event: ``mapper.encode_events`` is its definition. */
static PyObject *events(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream, *prev_obj, *items_in, *setters;
    PyTypeObject *etype;
    long long seq;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!LO!OnO!O!", &PyUnicode_Type, &stream, &seq, &PyUnicode_Type,
                          &prev_obj, &items_in, &start, &PyType_Type, &etype, &PyTuple_Type,
                          &setters))
        return NULL;
    if (!kind_index) {
        PyErr_SetString(PyExc_RuntimeError, "_fastenc.set_kinds was not called");
        return NULL;
    }
    descrsetfunc set[9];
    if (event_setters(setters, set, "events") < 0) return NULL;
    Py_ssize_t prev_len, stream_len;
    const char *prev0 = PyUnicode_AsUTF8AndSize(prev_obj, &prev_len);
    const char *stream_s = prev0 ? PyUnicode_AsUTF8AndSize(stream, &stream_len) : NULL;
    if (!stream_s) return NULL;
    if (prev_len != 32) {
        PyErr_SetString(PyExc_ValueError, "prev_hash is not a 32-character hash");
        return NULL;
    }
    PyObject *items = PySequence_Fast(items_in, "items must be a sequence");
    if (!items) return NULL;
    b2_start st;
    b2_init(&st, (const uint8_t *)"", 0, 16);
    columns c = {0};
    PyObject *result = NULL, *out = PyList_New(0);
    PyObject *prev_str = prev_obj;
    Py_INCREF(prev_str);
    char prev[32], hash[32];
    memcpy(prev, prev0, 32);
    buf mid = {0};
    if (!out || buf_putc(&mid, '\x1f') < 0 || buf_put(&mid, stream_s, stream_len) < 0 ||
        buf_putc(&mid, '\x1f') < 0)
        goto done;
    if (buf_put_i32(&c.kind_off, 0) < 0 || buf_put_i32(&c.rid_off, 0) < 0 ||
        buf_put_i32(&c.attrs_off, 0) < 0)
        goto done;
    int any_null = 0;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PySequence_Fast_GET_SIZE(items); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(items, i);
        Py_INCREF(item);
        /* The columns are only scratch here: emptied before each event (row 0 each time). */
        c.ts.n = c.kind.n = c.rid.n = c.attrs.n = c.hash.n = c.rid_valid.n = 0;
        c.kind_off.n = c.rid_off.n = c.attrs_off.n = 4;
        int rc = encode_one(&c, item, seq + 1, &st, prev, mid.p, mid.n, hash, 0, &any_null);
        if (rc < 0 || rc == STOP) {
            Py_DECREF(item);
            if (rc < 0) goto done;
            break;
        }
        seq += 1;
        memcpy(prev, hash, 32);
        PyObject *attrs = PyTuple_GET_ITEM(item, 3);
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        int has_none = 0;
        while (PyDict_Next(attrs, &pos, &k, &v))
            if (v == Py_None) {
                has_none = 1;
                break;
            }
        if (has_none) {
            PyObject *kept = PyDict_New();
            if (!kept) {
                Py_DECREF(item);
                goto done;
            }
            pos = 0;
            while (PyDict_Next(attrs, &pos, &k, &v))
                if (v != Py_None && PyDict_SetItem(kept, k, v) < 0) {
                    Py_DECREF(kept);
                    Py_DECREF(item);
                    goto done;
                }
            attrs = kept;
        } else {
            Py_INCREF(attrs);
        }
        PyObject *seq_o = PyLong_FromLongLong(seq);
        PyObject *hash_o = PyUnicode_FromStringAndSize(hash, 32);
        PyObject *e = (seq_o && hash_o) ? etype->tp_alloc(etype, 0) : NULL;
        PyObject *vals[9] = {stream, seq_o, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                             PyTuple_GET_ITEM(item, 2), attrs, prev_str, hash_o, Py_None};
        int bad = e == NULL;
        for (int j = 0; j < 9 && !bad; j++)
            bad = set[j](PyTuple_GET_ITEM(setters, j), e, vals[j]) < 0;
        if (!bad) bad = PyList_Append(out, e) < 0;
        Py_XDECREF(e);
        Py_XDECREF(seq_o);
        Py_DECREF(attrs);
        Py_DECREF(item);
        Py_DECREF(prev_str);
        prev_str = hash_o; /* the next event's prev_hash: the same str object */
        if (bad) goto done;
    }
    result = Py_BuildValue("nLOO", i, seq, prev_str, out);
done:
    Py_XDECREF(prev_str);
    Py_XDECREF(out);
    PyMem_RawFree(mid.p);
    columns_free(&c);
    Py_DECREF(items);
    return result;
}

/* digest(events) -> hex: BLAKE2b-16 of "{stream}\x1f{seq}\x1f{hash}\n" of each event, one after
 * another (the replay verdict's ``ledger_digest`` of events already in order, its definition);
 * None when an event's stream or hash is not a str or its seq not an int (the caller's Python
 * then says what it says). */
/* -- reading: a page of stored columns -> Events ------------------------------------------------ */
/* The stored attrs text of a plain event is the canonical JSON ``put_attrs`` writes: the kind's
 * attributes in name order, no whitespace, ints without leading zeros, strings with only '"',
 * '\\' and control characters escaped. ``parse_attrs`` accepts exactly that form where no string
 * holds an escape, and builds the dict json.loads would; a text it does not accept is handed to
 * the Python definition (sources.page_events_py), which decodes, validates, and raises what it
 * raises. So anything accepted here is a text json.loads reads as this dict and ``validate``
 * passes (every attribute the kind's, each of its type, none missing, none null). */
static int parse_int(const char *s, Py_ssize_t n, Py_ssize_t *i, long long *out) {
    Py_ssize_t j = *i;
    int neg = 0;
    if (j < n && s[j] == '-') {
        neg = 1;
        j++;
    }
    Py_ssize_t d0 = j;
    unsigned long long u = 0;
    while (j < n && s[j] >= '0' && s[j] <= '9') {
        if (j - d0 >= 19) return STOP; /* past int64 (or 19 digits near it): the Python path */
        u = u * 10 + (unsigned long long)(s[j] - '0');
        j++;
    }
    if (j == d0) return STOP;
    if (s[d0] == '0' && (j - d0 > 1 || neg)) return STOP; /* leading zero, or "-0" */
    if (u > (unsigned long long)LLONG_MAX) return STOP;
    *out = neg ? -(long long)u : (long long)u;
    *i = j;
    return 0;
}

/* A string at s[*i] ('"' ... '"') with no escape and no control character: a new str. */
static int parse_str(const char *s, Py_ssize_t n, Py_ssize_t *i, PyObject **out) {
    Py_ssize_t j = *i;
    if (j >= n || s[j] != '"') return STOP;
    Py_ssize_t a = ++j;
    int ascii = 1;
    while (j < n && s[j] != '"') {
        unsigned char c = (unsigned char)s[j];
        if (c < 0x20 || c == '\\') return STOP;
        ascii &= c < 0x80;
        j++;
    }
    if (j >= n) return STOP;
    if (out || !ascii) { /* only checking: ASCII needs no decoding to be valid */
        PyObject *str = PyUnicode_DecodeUTF8(s + a, j - a, NULL);
        if (!str) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear();
            return STOP;
        }
        if (out) *out = str;
        else Py_DECREF(str);
    }
    *i = j + 1;
    return 0;
}

/* A value of type ``type`` at s[*i]: 0 with *out a new reference, or with ``out`` NULL only
 * checked (nothing made; the compiled fold checks rows it does not need the values of). */
static int parse_value(const char *s, Py_ssize_t n, Py_ssize_t *i, int type, PyObject **out) {
    switch (type) {
        case T_INT: {
            long long x;
            int rc = parse_int(s, n, i, &x);
            if (rc || !out) return rc;
            *out = PyLong_FromLongLong(x);
            return *out ? 0 : -1;
        }
        case T_STR:
            return parse_str(s, n, i, out);
        case T_BOOL:
            if (n - *i >= 4 && memcmp(s + *i, "true", 4) == 0) {
                *i += 4;
                if (out) *out = Py_NewRef(Py_True);
                return 0;
            }
            if (n - *i >= 5 && memcmp(s + *i, "false", 5) == 0) {
                *i += 5;
                if (out) *out = Py_NewRef(Py_False);
                return 0;
            }
            return STOP;
        case T_INTS:
        case T_STRS: {
            if (*i >= n || s[*i] != '[') return STOP;
            PyObject *list = out ? PyList_New(0) : NULL;
            if (out && !list) return -1;
            Py_ssize_t j = *i + 1;
            int rc = 0;
            if (j < n && s[j] == ']') {
                j++;
                goto end;
            }
            for (;;) {
                PyObject *e = NULL;
                rc = parse_value(s, n, &j, type == T_INTS ? T_INT : T_STR, out ? &e : NULL);
                if (rc) goto end;
                if (list) {
                    rc = PyList_Append(list, e);
                    Py_DECREF(e);
                    if (rc < 0) goto end;
                }
                if (j < n && s[j] == ',') {
                    j++;
                    continue;
                }
                if (j < n && s[j] == ']') break;
                rc = STOP;
                goto end;
            }
            j++;
        end:
            if (rc) {
                Py_XDECREF(list);
                return rc;
            }
            *i = j;
            if (out) *out = list;
            return 0;
        }
    }
    return STOP;
}

/* The attrs dict of canonical text s[0:n] for kind k; STOP (nothing raised) where the text is
 * not in the accepted form. Top-level str values are shared through ``names`` (as the Python
 * definition shares them); attribute names are the kind table's own str objects. */
static int parse_attrs(const kind_spec *k, const char *s, Py_ssize_t n, PyObject *names,
                       PyObject **out) {
    if (n < 2 || s[0] != '{') return STOP;
    PyObject *d = PyDict_New();
    if (!d) return -1;
    Py_ssize_t i = 1;
    int first = 1, rc = 0;
    for (int j = 0; j < k->nattrs; j++) {
        const attr_spec *a = &k->attrs[j];
        Py_ssize_t at = i + (first ? 0 : 1);
        int here = (first || (i < n && s[i] == ',')) && n - at >= a->keylen &&
                   memcmp(s + at, a->key, (size_t)a->keylen) == 0;
        if (!here) {
            if (a->optional) continue;
            rc = STOP;
            goto out;
        }
        i = at + a->keylen;
        PyObject *v = NULL;
        rc = parse_value(s, n, &i, a->type, &v);
        if (rc) goto out;
        if (a->type == T_STR) {
            PyObject *shared = PyDict_SetDefault(names, v, v);
            Py_XINCREF(shared);
            Py_DECREF(v);
            if (!shared) {
                rc = -1;
                goto out;
            }
            v = shared;
        }
        rc = PyDict_SetItem(d, a->name, v);
        Py_DECREF(v);
        if (rc < 0) goto out;
        first = 0;
    }
    if (i != n - 1 || s[i] != '}') rc = STOP;
out:
    if (rc) {
        Py_DECREF(d);
        return rc;
    }
    *out = d;
    return 0;
}

typedef struct {
    Py_buffer b;
    int held;
} view;

static int view_get(PyObject *o, view *v) {
    v->held = 0;
    if (o == Py_None) {
        v->b.buf = NULL;
        v->b.len = 0;
        return 0;
    }
    if (PyObject_GetBuffer(o, &v->b, PyBUF_SIMPLE) < 0) return -1;
    v->held = 1;
    return 0;
}

static void view_release(view *v) {
    if (v->held) PyBuffer_Release(&v->b);
    v->held = 0;
}

static inline int bit_set(const view *v, Py_ssize_t i) {
    return v->b.buf == NULL || ((const uint8_t *)v->b.buf)[i >> 3] >> (i & 7) & 1;
}

/* One string of an Arrow string array (int32 offsets) at logical index i (its offset applied):
 * 0 with s/len set, STOP where a bound is broken (the Python path reads it instead). */
static int str_at(const view *off, const view *data, Py_ssize_t i, const char **s,
                  Py_ssize_t *len) {
    if ((i + 2) * 4 > off->b.len) return STOP;
    const int32_t *o = (const int32_t *)off->b.buf;
    int32_t a = o[i], b = o[i + 1];
    if (a < 0 || b < a || b > data->b.len) return STOP;
    *s = (const char *)data->b.buf + a;
    *len = b - a;
    return 0;
}

/* A page's 5 offsets and 10 buffers (see page_events), checked against its n rows: 0 with every
 * view held, or -1 with an exception naming ``who`` and none held (page_close them). */
static int page_open(PyObject *offs, PyObject *bufs, Py_ssize_t n, Py_ssize_t off[5], view v[10],
                     const char *who) {
    for (int j = 0; j < 10; j++) v[j].held = 0;
    if (PyTuple_GET_SIZE(offs) != 5 || PyTuple_GET_SIZE(bufs) != 10 || n < 0) {
        PyErr_Format(PyExc_ValueError, "%s: 5 offsets and 10 buffers expected", who);
        return -1;
    }
    for (int j = 0; j < 5; j++) {
        off[j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(offs, j));
        if (off[j] == -1 && PyErr_Occurred()) return -1;
        if (off[j] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: a negative offset", who);
            return -1;
        }
    }
    for (int j = 0; j < 10; j++)
        if (view_get(PyTuple_GET_ITEM(bufs, j), &v[j]) < 0) return -1;
    if (!v[0].b.buf || !v[1].b.buf || (off[0] + n) * 8 > v[0].b.len ||
        (off[1] + n) * 8 > v[1].b.len || (v[4].b.buf && (off[3] + n + 7) / 8 > v[4].b.len) ||
        (v[7].b.buf && (off[4] + n + 7) / 8 > v[7].b.len)) {
        PyErr_Format(PyExc_ValueError, "%s: a buffer is shorter than its rows", who);
        return -1;
    }
    return 0;
}

static void page_close(view v[10]) {
    for (int j = 0; j < 10; j++) view_release(&v[j]);
}

/* The last request id a page reader read: its bytes in the page's buffer and its shared str. */
typedef struct {
    const char *s;
    Py_ssize_t n;
    PyObject *obj;
} rid_cache;

/* One row of a page, as far as the compiled readers take it. */
typedef struct {
    const kind_spec *k;
    PyObject *rid;  /* borrowed from the rid_cache; NULL for a row with no request */
    const char *as; /* the attrs text */
    Py_ssize_t al;
} page_row;

/* Row i's kind and attrs text: 0; STOP where the definition must read the row (an unknown or
 * unsupported kind, a null text, an envelope that is not the kind's, a bound broken). */
static int page_row_kind(const view v[10], const Py_ssize_t off[5], Py_ssize_t i, page_row *r) {
    const char *ks;
    Py_ssize_t kl;
    r->rid = NULL;
    if (str_at(&v[2], &v[3], off[2] + i, &ks, &kl)) return STOP;
    const kind_spec *k = r->k = kind_by_bytes(ks, kl);
    if (!k || !k->supported) return STOP;
    if (!bit_set(&v[7], off[4] + i)) return STOP; /* a null text */
    if (bit_set(&v[4], off[3] + i) != k->scoped) return STOP; /* the envelope */
    return str_at(&v[8], &v[9], off[4] + i, &r->as, &r->al);
}

/* A request-scoped row's request id, shared through ``names`` (the last one again when the row
 * names it, as most events follow one of their own request): 0; STOP where it is not UTF-8 or a
 * bound is broken; -1 on error. With ``check_only`` the id is only checked (r->rid stays NULL). */
static int page_row_rid(const view v[10], const Py_ssize_t off[5], Py_ssize_t i,
                        PyObject *names, rid_cache *c, page_row *r, int check_only) {
    const char *rs;
    Py_ssize_t rl;
    if (!r->k->scoped) return 0;
    if (str_at(&v[5], &v[6], off[3] + i, &rs, &rl)) return STOP;
    if (c->obj && rl == c->n && memcmp(rs, c->s, (size_t)rl) == 0) {
        r->rid = check_only ? NULL : c->obj;
        return 0;
    }
    if (check_only) {
        Py_ssize_t j = 0;
        while (j < rl && !((unsigned char)rs[j] & 0x80)) j++;
        if (j == rl) return 0; /* ASCII */
    }
    PyObject *str = PyUnicode_DecodeUTF8(rs, rl, NULL);
    if (!str) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
        PyErr_Clear();
        return STOP;
    }
    if (check_only) {
        Py_DECREF(str);
        return 0;
    }
    PyObject *shared = PyDict_SetDefault(names, str, str);
    Py_XINCREF(shared);
    Py_DECREF(str);
    if (!shared) return -1;
    Py_XSETREF(c->obj, shared);
    c->s = rs;
    c->n = rl;
    r->rid = c->obj;
    return 0;
}

/* page_events(stream, n, offsets, buffers, etype, setters, names, parsed, shared_max,
 *             shared_chars, slow) -> list of Event
 * ``sources.page_events_py``'s loop over one record batch of PAGE_COLUMNS (seq, ts_ns, kind,
 * request_id, attrs), read from the Arrow buffers in place: ``offsets`` the five arrays' offsets,
 * ``buffers`` (seq values, ts values, kind offsets, kind data, rid validity or None, rid offsets,
 * rid data, attrs validity or None, attrs offsets, attrs data). A row it does not take (an
 * unknown kind, an envelope or text not in the accepted form, a null text) is ``slow(i)``: the
 * Python definition for row i, which returns its Event or raises. Strings are shared through
 * ``names`` and short attrs dicts through ``parsed`` keyed (kind, text), as the definition
 * does. */
static PyObject *page_events(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream, *offs, *bufs, *setters, *names, *parsed, *slow;
    PyTypeObject *etype;
    Py_ssize_t n, shared_max, shared_chars;
    if (!PyArg_ParseTuple(args, "O!nO!O!O!O!O!O!nnO", &PyUnicode_Type, &stream, &n,
                          &PyTuple_Type, &offs, &PyTuple_Type, &bufs, &PyType_Type, &etype,
                          &PyTuple_Type, &setters, &PyDict_Type, &names, &PyDict_Type, &parsed,
                          &shared_max, &shared_chars, &slow))
        return NULL;
    if (!kind_index) {
        PyErr_SetString(PyExc_RuntimeError, "_fastenc.set_kinds was not called");
        return NULL;
    }
    descrsetfunc set[9];
    if (event_setters(setters, set, "page_events") < 0) return NULL;
    Py_ssize_t off[5];
    view v[10];
    rid_cache cache = {NULL, -1, NULL};
    PyObject *out = NULL, *empty = PyUnicode_New(0, 0);
    if (!empty) return NULL;
    if (page_open(offs, bufs, n, off, v, "page_events") < 0) goto done;
    const int64_t *seqs = (const int64_t *)v[0].b.buf + off[0];
    const int64_t *tss = (const int64_t *)v[1].b.buf + off[1];
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = NULL, *rid = NULL, *attrs = NULL, *seq_o = NULL, *ts_o = NULL;
        page_row r;
        int rc = page_row_kind(v, off, i, &r);
        if (!rc) rc = page_row_rid(v, off, i, names, &cache, &r, 0);
        if (rc < 0) goto row_fail;
        const kind_spec *k = r.k;
        rid = r.rid;
        Py_XINCREF(rid);
        if (!rc) {
            PyObject *key = NULL;
            if (r.al <= 4 * shared_chars) { /* possibly short enough to share (chars, not bytes) */
                PyObject *text = PyUnicode_DecodeUTF8(r.as, r.al, NULL);
                if (!text) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto row_fail;
                    PyErr_Clear();
                    rc = STOP;
                } else if (PyUnicode_GET_LENGTH(text) <= shared_chars) {
                    key = PyTuple_Pack(2, k->name, text);
                    Py_DECREF(text);
                    if (!key) goto row_fail;
                    attrs = PyDict_GetItemWithError(parsed, key);
                    if (attrs) {
                        Py_INCREF(attrs);
                    } else if (PyErr_Occurred()) {
                        Py_DECREF(key);
                        goto row_fail;
                    }
                } else {
                    Py_DECREF(text);
                }
            }
            if (!rc && !attrs) {
                rc = parse_attrs(k, r.as, r.al, names, &attrs);
                if (rc < 0) {
                    Py_XDECREF(key);
                    goto row_fail;
                }
                if (!rc && key && PyDict_GET_SIZE(parsed) < shared_max &&
                    PyDict_SetItem(parsed, key, attrs) < 0) {
                    Py_DECREF(key);
                    goto row_fail;
                }
            }
            Py_XDECREF(key);
        }
        if (rc) { /* the Python definition for this row */
            Py_CLEAR(rid);
            Py_CLEAR(attrs);
            e = PyObject_CallFunction(slow, "n", i);
            if (!e) goto row_fail;
            PyList_SET_ITEM(out, i, e);
            continue;
        }
        seq_o = PyLong_FromLongLong(seqs[i]);
        ts_o = PyLong_FromLongLong(tss[i]);
        e = (seq_o && ts_o) ? etype->tp_alloc(etype, 0) : NULL;
        if (!e) goto row_fail;
        {
            PyObject *vals[9] = {stream, seq_o, ts_o, k->name, rid ? rid : Py_None, attrs,
                                 empty, empty, Py_None};
            for (int j = 0; j < 9; j++)
                if (set[j](PyTuple_GET_ITEM(setters, j), e, vals[j]) < 0) goto row_fail;
        }
        PyList_SET_ITEM(out, i, e);
        Py_DECREF(seq_o);
        Py_DECREF(ts_o);
        Py_XDECREF(rid);
        Py_DECREF(attrs);
        continue;
    row_fail:
        Py_XDECREF(e);
        Py_XDECREF(seq_o);
        Py_XDECREF(ts_o);
        Py_XDECREF(rid);
        Py_XDECREF(attrs);
        Py_CLEAR(out);
        goto done;
    }
done:
    page_close(v);
    Py_XDECREF(cache.obj);
    Py_DECREF(empty);
    return out;
}

#include "_fastfold.c" /* the projection's fold of a page: it reads pages as page_events does */

static PyObject *digest(PyObject *self, PyObject *events_in) {
    (void)self;
    static PyObject *n_stream = NULL, *n_seq = NULL, *n_hash = NULL;
    if (!n_stream) {
        n_stream = PyUnicode_InternFromString("stream");
        n_seq = PyUnicode_InternFromString("seq");
        n_hash = PyUnicode_InternFromString("hash");
        if (!n_stream || !n_seq || !n_hash) return NULL;
    }
    PyObject *evs = PySequence_Fast(events_in, "events must be a sequence");
    if (!evs) return NULL;
    buf b = {0};
    PyObject *result = NULL;
    int plain = 1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(evs) && plain; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(evs, i);
        PyObject *st = PyObject_GetAttr(e, n_stream);
        PyObject *sq = st ? PyObject_GetAttr(e, n_seq) : NULL;
        PyObject *h = sq ? PyObject_GetAttr(e, n_hash) : NULL;
        int rc = 0;
        if (!h) {
            rc = -1;
        } else if (!PyUnicode_CheckExact(st) || !PyLong_CheckExact(sq) ||
                   !PyUnicode_CheckExact(h)) {
            plain = 0;
        } else {
            Py_ssize_t ns, nh;
            const char *ss = PyUnicode_AsUTF8AndSize(st, &ns);
            const char *hs = ss ? PyUnicode_AsUTF8AndSize(h, &nh) : NULL;
            int ovf;
            long long q = hs ? PyLong_AsLongLongAndOverflow(sq, &ovf) : 0;
            if (!hs) {
                PyErr_Clear();
                plain = 0;
            } else if (ovf || (q == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                plain = 0;
            } else if (buf_put(&b, ss, ns) < 0 || buf_putc(&b, '\x1f') < 0 ||
                       buf_put_i64(&b, q) < 0 || buf_putc(&b, '\x1f') < 0 ||
                       buf_put(&b, hs, nh) < 0 || buf_putc(&b, '\n') < 0) {
                rc = -1;
            }
        }
        Py_XDECREF(st);
        Py_XDECREF(sq);
        Py_XDECREF(h);
        if (rc < 0) goto done;
    }
    if (!plain) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    b2_start s2;
    b2_init(&s2, (const uint8_t *)"", 0, 16);
    char out[32];
    b2_hex16(&s2, (const uint8_t *)(b.p ? b.p : ""), (size_t)b.n, out);
    result = PyUnicode_FromStringAndSize(out, 32);
done:
    PyMem_RawFree(b.p);
    Py_DECREF(evs);
    return result;
}

/* blake2b16(data, key=b"") -> hex: the module's BLAKE2b, for the tests against hashlib. */
static PyObject *blake2b16(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    const char *key = "";
    Py_ssize_t keylen = 0;
    if (!PyArg_ParseTuple(args, "y*|y#", &data, &key, &keylen)) return NULL;
    if (keylen > 64 || data.len == 0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "key over 64 bytes or empty data");
        return NULL;
    }
    b2_start st;
    b2_init(&st, (const uint8_t *)key, (size_t)keylen, 16);
    char out[32];
    b2_hex16(&st, data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyUnicode_FromStringAndSize(out, 32);
}

/* hash_each(offsets, data, start, n, key=b"") -> bytes: the 32 hex chars of BLAKE2b-16 of each
 * of the n strings of an Arrow string array (int32 ``offsets`` and ``data`` buffers, first string
 * at ``start``), one after another. ``verify``'s per-event chain check, without the GIL. */
static PyObject *hash_each(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer off, data;
    Py_ssize_t start, n;
    const char *key = "";
    Py_ssize_t keylen = 0;
    if (!PyArg_ParseTuple(args, "y*y*nn|y#", &off, &data, &start, &n, &key, &keylen)) return NULL;
    PyObject *out = NULL;
    if (keylen > 64 || start < 0 || n < 0 || (off.len / 4) < start + n + 1) {
        PyErr_SetString(PyExc_ValueError, "hash_each: bad key, start or count");
        goto done;
    }
    const char *o = off.buf;
    for (Py_ssize_t i = start; i <= start + n; i++) { /* bounds first: the buffers are hostile */
        int32_t a, b = 0;
        memcpy(&a, o + 4 * i, 4);
        if (i < start + n) memcpy(&b, o + 4 * (i + 1), 4);
        if (a < 0 || a > data.len || (i < start + n && (b <= a || b > data.len))) {
            PyErr_SetString(PyExc_ValueError, "hash_each: offsets out of bounds or empty");
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, 32 * n);
    if (!out) goto done;
    b2_start st;
    b2_init(&st, (const uint8_t *)key, (size_t)keylen, 16);
    char *dst = PyBytes_AS_STRING(out);
    const uint8_t *d = data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t a, b;
        memcpy(&a, o + 4 * (start + i), 4);
        memcpy(&b, o + 4 * (start + i + 1), 4);
        b2_hex16(&st, d + a, (size_t)(b - a), dst + 32 * i);
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&off);
    PyBuffer_Release(&data);
    return out;
}

/* -- the runtime core's prompt hash chain -------------------------------------------------------
 * A request's token ids are drawn from Python's Mersenne Twister (``runtime/workload.py``: a
 * ``_random.Random`` seeded from a 64-bit int, 960 bits a chunk by ``getrandbits``, cut into
 * 15-bit tokens) and its KV blocks are named by a BLAKE2b chain over them
 * (``runtime/core/blocks.py``: block i's hash covers "prev|t1,t2,..."). Both Python loops stay
 * the definitions (tests/runtime/test_fastchain.py holds this code equal to them); here the two
 * run without a Python int, str or bytes per token: they were a fifth of the core's cost per
 * request. The generator below is CPython's (Modules/_randommodule.c), so the tokens are the
 * ones ``_random.Random(seed).getrandbits`` gives. */
#define MT_N 624
#define MT_M 397

typedef struct {
    uint32_t mt[MT_N];
    int index;
} mt_state;

static void mt_init_genrand(mt_state *s, uint32_t seed) {
    uint32_t *mt = s->mt;
    mt[0] = seed;
    for (int i = 1; i < MT_N; i++) mt[i] = 1812433253U * (mt[i - 1] ^ (mt[i - 1] >> 30)) + (uint32_t)i;
    s->index = MT_N;
}

/* init_by_array starts from init_genrand(19650218), the same 624 words for every seed: made
 * once (at module init), copied per seed instead of a third of the seeding's serial work. */
static mt_state mt_start;

/* random.seed(n) for 0 <= n < 2**64: init_by_array over n's 32-bit words, low word first (one
 * word when n < 2**32, as CPython counts them). */
static void mt_seed(mt_state *s, uint64_t n) {
    uint32_t key[2] = {(uint32_t)n, (uint32_t)(n >> 32)};
    size_t keylen = key[1] ? 2 : 1;
    uint32_t *mt = s->mt;
    *s = mt_start;
    size_t i = 1, j = 0;
    for (size_t k = MT_N > keylen ? MT_N : keylen; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525U)) + key[j] + (uint32_t)j;
        i++;
        j++;
        if (i >= MT_N) {
            mt[0] = mt[MT_N - 1];
            i = 1;
        }
        if (j >= keylen) j = 0;
    }
    for (size_t k = MT_N - 1; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941U)) - (uint32_t)i;
        i++;
        if (i >= MT_N) {
            mt[0] = mt[MT_N - 1];
            i = 1;
        }
    }
    mt[0] = 0x80000000U;
}

/* The next output. CPython twists all 624 words when it runs out; word kk's twist reads only
 * words kk + 1 and kk + 397 (mod 624) as they are at that point of the in-order pass, so
 * twisting each word just before it is output gives the same words: a request draws ~30 of them,
 * and the other ~590 twists were as much work as the seeding. */
static uint32_t mt_next(mt_state *s) {
    static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
    uint32_t *mt = s->mt, y;
    if (s->index >= MT_N) s->index = 0;
    int kk = s->index++;
    y = (mt[kk] & 0x80000000U) | (mt[kk + 1 < MT_N ? kk + 1 : 0] & 0x7fffffffU);
    mt[kk] = mt[kk + MT_M < MT_N ? kk + MT_M : kk + MT_M - MT_N] ^ (y >> 1) ^ mag01[y & 1U];
    y = mt[kk];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

#define TOKEN_BITS 15
#define CHUNK_TOKENS 64 /* workload._CHUNK: 960 bits, 30 words of getrandbits, a chunk */

/* The first n tokens the generator seeded with ``seed`` gives (workload._draw). */
static void mt_tokens(uint64_t seed, int32_t *out, Py_ssize_t n) {
    mt_state s;
    mt_seed(&s, seed);
    uint8_t raw[TOKEN_BITS * CHUNK_TOKENS / 8 + 4];
    for (Py_ssize_t at = 0; at < n; at += CHUNK_TOKENS) {
        /* getrandbits(960): 30 words, least significant first, as little-endian bytes. */
        for (int w = 0; w < TOKEN_BITS * CHUNK_TOKENS / 32; w++) {
            uint32_t r = mt_next(&s);
            for (int b = 0; b < 4; b++) raw[4 * w + b] = (uint8_t)(r >> (8 * b));
        }
        memset(raw + TOKEN_BITS * CHUNK_TOKENS / 8, 0, 4);
        Py_ssize_t take = n - at < CHUNK_TOKENS ? n - at : CHUNK_TOKENS;
        for (Py_ssize_t t = 0; t < take; t++) {
            size_t bit = (size_t)t * TOKEN_BITS;
            uint32_t x = (uint32_t)raw[bit / 8] | (uint32_t)raw[bit / 8 + 1] << 8 |
                         (uint32_t)raw[bit / 8 + 2] << 16;
            out[at + t] = (int32_t)((x >> (bit % 8)) & ((1U << TOKEN_BITS) - 1));
        }
    }
}

/* u64 of a Python int in [0, 2**64), or -1 with an exception set. */
static int as_u64(PyObject *o, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* draw_tokens(seed, n) -> list[int]: workload._draw(_random.Random(seed), n), 0 <= seed < 2**64. */
static PyObject *draw_tokens(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *seed_obj;
    Py_ssize_t n;
    uint64_t seed;
    if (!PyArg_ParseTuple(args, "On", &seed_obj, &n) || as_u64(seed_obj, &seed) < 0) return NULL;
    if (n < 0 || n > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "token count out of range");
        return NULL;
    }
    int32_t *tok = PyMem_Malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!tok) return PyErr_NoMemory();
    mt_tokens(seed, tok, n);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *v = PyLong_FromLong(tok[i]);
        if (!v) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, v);
    }
    PyMem_Free(tok);
    return out;
}

/* workload._seed("tokens", token_seed): BLAKE2b-8 of the key's repr, a little-endian int. */
static uint64_t tokens_seed(long long token_seed) {
    char key[48];
    int len = snprintf(key, sizeof key, "('tokens', %lld)", token_seed);
    b2_start st;
    b2_init(&st, NULL, 0, 8);
    uint8_t d[16];
    b2_digest16(&st, (const uint8_t *)key, (size_t)len, d);
    uint64_t seed = 0;
    for (int b = 7; b >= 0; b--) seed = seed << 8 | d[b];
    return seed;
}

/* spec_chain(head, token_seed, n, block_tokens) -> (hashes, nfull, seeds): blocks._chain of the
 * n tokens that are the ints of the tuple ``head`` (a shared prefix) followed by the first
 * n - len(head) tokens of the generator workload._rng("tokens", token_seed) (an int of 64 bits
 * at most: OverflowError otherwise). Each hash is 16 bytes; each seed its first 8 bytes as a
 * little-endian int, less the top bit (blocks.seed_of). */
static PyObject *spec_chain(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *head;
    Py_ssize_t n, bt;
    long long token_seed;
    if (!PyArg_ParseTuple(args, "O!Lnn", &PyTuple_Type, &head, &token_seed, &n, &bt)) return NULL;
    uint64_t seed = tokens_seed(token_seed);
    Py_ssize_t nh = PyTuple_GET_SIZE(head);
    if (n <= 0 || n > (1 << 24) || bt <= 0 || bt > (1 << 20) || nh > n) {
        PyErr_SetString(PyExc_ValueError, "token or block count out of range");
        return NULL;
    }
    PyObject *hashes = NULL, *seeds = NULL, *result = NULL;
    int32_t *tok = PyMem_Malloc(sizeof(int32_t) * (size_t)n);
    /* One block's message: 16 bytes of the previous hash, '|', and up to 20 chars a token. */
    char *msg = PyMem_Malloc(17 + 21 * (size_t)bt);
    if (!tok || !msg) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nh; i++) {
        long long t = PyLong_AsLongLong(PyTuple_GET_ITEM(head, i));
        if (t == -1 && PyErr_Occurred()) goto done;
        if (t < 0 || t > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a prefix token out of range");
            goto done;
        }
        tok[i] = (int32_t)t;
    }
    mt_tokens(seed, tok + nh, n - nh);
    Py_ssize_t nblocks = (n + bt - 1) / bt;
    hashes = PyTuple_New(nblocks);
    seeds = PyTuple_New(nblocks);
    if (!hashes || !seeds) goto done;
    b2_start st;
    b2_init(&st, NULL, 0, 16);
    uint8_t prev[16];
    size_t prevlen = 0;
    for (Py_ssize_t blk = 0; blk < nblocks; blk++) {
        size_t m = 0;
        memcpy(msg, prev, prevlen);
        m = prevlen;
        msg[m++] = '|';
        Py_ssize_t end = (blk + 1) * bt < n ? (blk + 1) * bt : n;
        for (Py_ssize_t i = blk * bt; i < end; i++) {
            if (i > blk * bt) msg[m++] = ',';
            char digits[12];
            int nd = 0;
            uint32_t v = (uint32_t)tok[i];
            do {
                digits[nd++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            while (nd) msg[m++] = digits[--nd];
        }
        b2_digest16(&st, (const uint8_t *)msg, m, prev);
        prevlen = 16;
        PyObject *h = PyBytes_FromStringAndSize((const char *)prev, 16);
        uint64_t s64 = 0;
        for (int b = 7; b >= 0; b--) s64 = s64 << 8 | prev[b];
        PyObject *sd = PyLong_FromUnsignedLongLong(s64 & 0x7fffffffffffffffULL);
        if (!h || !sd) {
            Py_XDECREF(h);
            Py_XDECREF(sd);
            goto done;
        }
        PyTuple_SET_ITEM(hashes, blk, h);
        PyTuple_SET_ITEM(seeds, blk, sd);
    }
    result = Py_BuildValue("(OnO)", hashes, n / bt, seeds);
done:
    Py_XDECREF(hashes);
    Py_XDECREF(seeds);
    PyMem_Free(tok);
    PyMem_Free(msg);
    return result;
}

/* -- the emit hot path ------------------------------------------------------------------------ */
/* Emitter(now, append, queue, bound, overflow): a callable ``emit(kind, request_id=None,
 * **attrs)`` that does what ``Ledger._make_emit``'s closure does (append ``(now(), kind,
 * request_id, attrs)``; call ``overflow()`` once ``len(queue) > bound``) as a builtin called
 * through vectorcall: the keyword arguments arrive as a vector and become the attrs dict here,
 * without the Python frame and **kwargs packing of a Python-level emit. */
typedef struct {
    PyObject_HEAD
    PyObject *now, *append, *queue, *overflow;
    Py_ssize_t bound;
    vectorcallfunc vectorcall;
} Emitter;

static PyObject *request_id_str = NULL; /* interned "request_id" */
static PyObject *kind_str = NULL;       /* interned "kind" */

/* Whether the keyword ``name`` is the interned ``word``. Keyword names are almost always
 * interned (a call's names come from its code object), and two interned strs are equal only if
 * they are the same object, so identity settles it; the length test keeps the rest from a full
 * PyUnicode_Compare (callgrind: ~270 instructions an event had gone to comparing every keyword
 * with both words). */
static inline int is_name(PyObject *name, PyObject *word) {
    return name == word ||
           (!PyUnicode_CHECK_INTERNED(name) &&
            PyUnicode_GET_LENGTH(name) == PyUnicode_GET_LENGTH(word) &&
            PyUnicode_Compare(name, word) == 0);
}

static PyObject *emitter_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames) {
    Emitter *self = (Emitter *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "emit() takes 1 or 2 positional arguments (kind, "
                     "request_id) but %zd were given", nargs);
        return NULL;
    }
    PyObject *kind = args[0], *rid = nargs == 2 ? args[1] : Py_None;
    PyObject *attrs = PyDict_New();
    if (!attrs) return NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (is_name(name, request_id_str)) {
            if (nargs == 2) {
                PyErr_SetString(PyExc_TypeError, "emit() got multiple values for argument "
                                "'request_id'");
                goto fail;
            }
            rid = args[nargs + i];
            continue;
        }
        if (is_name(name, kind_str)) {
            PyErr_SetString(PyExc_TypeError, "emit() got multiple values for argument 'kind'");
            goto fail;
        }
        if (PyDict_SetItem(attrs, name, args[nargs + i]) < 0) goto fail;
    }
    PyObject *ts = PyObject_CallNoArgs(self->now);
    if (!ts) goto fail;
    PyObject *item = PyTuple_New(4);
    if (!item) {
        Py_DECREF(ts);
        goto fail;
    }
    Py_INCREF(kind);
    Py_INCREF(rid);
    PyTuple_SET_ITEM(item, 0, ts);
    PyTuple_SET_ITEM(item, 1, kind);
    PyTuple_SET_ITEM(item, 2, rid);
    PyTuple_SET_ITEM(item, 3, attrs); /* the tuple owns attrs now */
    /* Out of the cyclic collector's sight: an item can be in no cycle (its attrs dict is the
     * call's own, nothing else refers to it) and lives until the shipper drops it, so every
     * collection meanwhile walked it, and the survivors went on to older generations (in
     * bench_core the runtime's collections cost 2-3x more with the ledger than without).
     * Reference counting still frees it; lists inside attrs stay tracked on their own. */
    if (PyObject_GC_IsTracked(attrs)) PyObject_GC_UnTrack(attrs);
    PyObject_GC_UnTrack(item);
    PyObject *r = PyObject_CallOneArg(self->append, item);
    Py_DECREF(item);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_ssize_t n = PyObject_Size(self->queue);
    if (n < 0) return NULL;
    if (n > self->bound) {
        r = PyObject_CallNoArgs(self->overflow);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
fail:
    Py_DECREF(attrs);
    return NULL;
}

static PyObject *emitter_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *now, *append, *queue, *overflow;
    Py_ssize_t bound;
    static char *names[] = {"now", "append", "queue", "bound", "overflow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOnO", names, &now, &append, &queue, &bound,
                                     &overflow))
        return NULL;
    if (!PyCallable_Check(now) || !PyCallable_Check(append) || !PyCallable_Check(overflow)) {
        PyErr_SetString(PyExc_TypeError, "now, append and overflow must be callable");
        return NULL;
    }
    Emitter *self = (Emitter *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    Py_INCREF(now);
    Py_INCREF(append);
    Py_INCREF(queue);
    Py_INCREF(overflow);
    self->now = now;
    self->append = append;
    self->queue = queue;
    self->overflow = overflow;
    self->bound = bound;
    self->vectorcall = emitter_vectorcall;
    return (PyObject *)self;
}

static int emitter_traverse(Emitter *self, visitproc visit, void *arg) {
    Py_VISIT(self->now);
    Py_VISIT(self->append);
    Py_VISIT(self->queue);
    Py_VISIT(self->overflow);
    return 0;
}

static int emitter_clear(Emitter *self) {
    Py_CLEAR(self->now);
    Py_CLEAR(self->append);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->overflow);
    return 0;
}

static void emitter_dealloc(Emitter *self) {
    PyObject_GC_UnTrack(self);
    emitter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject EmitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvledger.ledger._fastenc.Emitter",
    .tp_doc = "emit(kind, request_id=None, **attrs): the ledger's hot path as a builtin.",
    .tp_basicsize = sizeof(Emitter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = emitter_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Emitter, vectorcall),
    .tp_traverse = (traverseproc)emitter_traverse,
    .tp_clear = (inquiry)emitter_clear,
    .tp_dealloc = (destructor)emitter_dealloc,
};

/* -- the emit hot path, process mode: events written as marshal bytes -------------------------
 * FrameEmitter(now, queue, bound, overflow): ``emit(kind, request_id=None, **attrs)`` for a
 * process-mode ``Ledger``. Instead of a (ts, kind, request_id, attrs) tuple and a dict per
 * event, marshalled 128 at a time by ``Ledger._pack``, it writes each event's marshal bytes
 * straight into the frame being filled: a buffer holding ``marshal.dumps(list of items)``
 * (its item count patched after every event). While it is filled, the emitter itself stands
 * in the queue as its last item, in the frame's place, so the queue still holds everything
 * not yet packed, in order (and is not empty while an event waits); sealing the frame puts its
 * bytes there. Profiled (callgrind, bench_core), the tuple + dict + marshal.dumps of an event
 * had cost the runtime ~2.4k instructions, ~1.6k of them in marshal (v4's reference table).
 *
 * The bytes are marshal's own types: ints ('i', or 'l' in 15-bit digits), strs ('z'/'a' ASCII,
 * 'u' UTF-8), None, bools, floats ('g'), and tuples, lists and str-keyed dicts of those (a few
 * levels deep). The kind and the keyword names refer back ('r') to their first use in the
 * frame, as marshal.dumps's references did; nothing else is flagged referable, so an event
 * written by ``marshal.dumps(item, 2)`` (no references at all) can sit among them.
 * ``marshal.loads`` and the writer's ``encode_marshal`` read them as they read
 * ``marshal.dumps(items)`` (tests/ledger/test_fastenc.py). An event with anything else (a
 * subclass, bytes, a big int, a lone surrogate...) is written as ``marshal.dumps(item, 2)``;
 * one marshal refuses is queued as its tuple after the frame is sealed, and ``Ledger._pack``
 * pickles it as before.
 *
 * Threads: ``now()`` may run Python code (and so let another thread in); from there on an
 * emit calls no Python code, raises nothing (but MemoryError) and allocates no object the
 * cyclic collector could start a collection for (whose finalizers could let another thread
 * in), until the event's bytes are in the frame and counted: an event is written whole or not
 * at all, whatever other threads emit. The slow path builds its tuple before it touches the
 * frame. ``put`` (seal the frame, queue an object: flush marks, subscriber requests,
 * backpressure events) and ``take`` (seal, pop everything queued) are atomic the same way. */
typedef struct {
    PyObject_HEAD
    PyObject *now, *queue, *append, *pop, *popleft, *overflow;
    buf frame;            /* the frame being filled: '[', count, events; empty: none open */
    Py_ssize_t open_n;    /* events in it */
    Py_ssize_t pending;   /* events emitted since the last take() */
    Py_ssize_t bound;
    int monotonic;        /* now is time.monotonic_ns: read the clock here */
    /* This frame's back-references (marshal's 'r'): the kind and keyword-name strs written
     * so far, by index (held, so that an address stays the same str until the frame is
     * sealed), found through a direct-mapped table of their addresses (index + 1; a slot
     * taken by another str writes this one in full: bytes, never a wrong reference). */
    PyObject *refs[255];
    int nrefs;
    uint8_t ref_slot[256];
    vectorcallfunc vectorcall;
} FrameEmitter;

#define F_DEPTH_MAX 4
#define F_FRAME_HEAD 5           /* '[' and the item count */
#define F_KEEP_BYTES (256 << 10) /* a sealed frame's buffer larger than this is freed */

static inline void f_le32(char *p, uint32_t n) {
    p[0] = (char)(n & 0xff);
    p[1] = (char)((n >> 8) & 0xff);
    p[2] = (char)((n >> 16) & 0xff);
    p[3] = (char)((n >> 24) & 0xff);
}

static inline int f_u32(buf *b, char code, uint32_t n) {
    if (buf_grow(b, 5) < 0) return -1;
    b->p[b->n] = code;
    f_le32(b->p + b->n + 1, n);
    b->n += 5;
    return 0;
}

/* An int64 as marshal writes it: 'i' where it fits 32 bits, else 'l', the digit count (negative
 * for a negative number) and the magnitude's 15-bit digits, least significant first. */
static int f_put_int(buf *b, long long x) {
    if (x >= INT32_MIN && x <= INT32_MAX) return f_u32(b, 'i', (uint32_t)(int32_t)x);
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    uint16_t d[5];
    int nd = 0;
    while (u) {
        d[nd++] = (uint16_t)(u & 0x7fff);
        u >>= 15;
    }
    if (f_u32(b, 'l', (uint32_t)(x < 0 ? -nd : nd)) < 0 || buf_grow(b, 2 * nd) < 0) return -1;
    for (int k = 0; k < nd; k++) {
        b->p[b->n++] = (char)(d[k] & 0xff);
        b->p[b->n++] = (char)(d[k] >> 8);
    }
    return 0;
}

/* One exact str: 'z' (ASCII, < 256 bytes), 'a' (ASCII) or 'u' (UTF-8, encoded here from the
 * code points: no Python call, no exception, no UTF-8 copy cached on the str). STOP: a lone
 * surrogate (marshal writes it "surrogatepass": the slow path's). */
static int f_put_str(buf *b, PyObject *v) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(v) < 0) return -1;
#endif
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    const void *data = PyUnicode_DATA(v);
    if (PyUnicode_IS_ASCII(v)) {
        if (n < 256) {
            if (buf_grow(b, n + 2) < 0) return -1;
            b->p[b->n++] = 'z';
            b->p[b->n++] = (char)n;
            memcpy(b->p + b->n, data, (size_t)n);
            b->n += n;
            return 0;
        }
        if (n > INT32_MAX) return STOP;
        if (f_u32(b, 'a', (uint32_t)n) < 0) return -1;
        return buf_put(b, data, n);
    }
    if (n > INT32_MAX / 4) return STOP;
    if (f_u32(b, 'u', 0) < 0 || buf_grow(b, 4 * n) < 0) return -1;
    Py_ssize_t len_at = b->n - 4;
    int kind = PyUnicode_KIND(v);
    unsigned char *o = (unsigned char *)b->p + b->n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *o++ = (unsigned char)c;
        } else if (c < 0x800) {
            *o++ = (unsigned char)(0xC0 | (c >> 6));
            *o++ = (unsigned char)(0x80 | (c & 0x3F));
        } else if (c >= 0xD800 && c <= 0xDFFF) {
            return STOP;
        } else if (c < 0x10000) {
            *o++ = (unsigned char)(0xE0 | (c >> 12));
            *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (unsigned char)(0x80 | (c & 0x3F));
        } else {
            *o++ = (unsigned char)(0xF0 | (c >> 18));
            *o++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *o++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    b->n = (Py_ssize_t)((char *)o - b->p);
    f_le32(b->p + len_at, (uint32_t)(b->n - len_at - 4));
    return 0;
}

static inline size_t f_slot(PyObject *s) {
    return (size_t)(((uintptr_t)s >> 4) * 0x9E3779B97F4A7C15ULL >> 56) & 0xff;
}

/* A kind or keyword name: 'r' and its index where this frame has it already, else in full,
 * flagged as referable (FLAG_REF: marshal.loads and encode_marshal number the flagged objects
 * in the order they read them, which is the order written). A kind and its keys are ~25 of an
 * event's ~70 bytes written in full. */
static int f_put_name(FrameEmitter *self, buf *b, PyObject *s) {
    size_t h = f_slot(s);
    int e = self->ref_slot[h];
    if (e && self->refs[e - 1] == s) return f_u32(b, 'r', (uint32_t)(e - 1));
    Py_ssize_t at = b->n;
    int rc = f_put_str(b, s);
    if (rc || e || self->nrefs == (int)(sizeof self->refs / sizeof self->refs[0])) return rc;
    b->p[at] = (char)(b->p[at] | 0x80);
    Py_INCREF(s);
    self->refs[self->nrefs++] = s;
    self->ref_slot[h] = (uint8_t)self->nrefs;
    return 0;
}

/* Forget the references from ``keep`` on (an event taken back, or the frame sealed). No
 * Python code runs: the caller, or the frame's queue, holds every str still in use... */
static void f_refs_drop(FrameEmitter *self, int keep) {
    while (self->nrefs > keep) {
        PyObject *s = self->refs[--self->nrefs];
        self->ref_slot[f_slot(s)] = 0;
        Py_DECREF(s); /* ...and a str's deallocation runs none either */
    }
}

/* One value, as marshal.dumps writes it but without back-references. 0: written; STOP: a value
 * this does not take (the caller hands the whole event to marshal); -1: an error set. Calls no
 * Python code: only exact builtin types are read. */
static int f_put_value(buf *b, PyObject *v, int depth) {
    PyTypeObject *t = Py_TYPE(v);
    if (v == Py_None) return buf_putc(b, 'N');
    if (v == Py_True) return buf_putc(b, 'T');
    if (v == Py_False) return buf_putc(b, 'F');
    if (t == &PyLong_Type) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return STOP;
        if (x == -1 && PyErr_Occurred()) return -1;
        return f_put_int(b, x);
    }
    if (t == &PyUnicode_Type) return f_put_str(b, v);
    if (t == &PyFloat_Type) {
        if (buf_grow(b, 9) < 0) return -1;
        b->p[b->n++] = 'g';
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(v), b->p + b->n, 1) < 0) return -1;
        b->n += 8;
        return 0;
    }
    if (depth >= F_DEPTH_MAX) return STOP;
    if (t == &PyTuple_Type || t == &PyList_Type) {
        Py_ssize_t n = Py_SIZE(v);
        PyObject **items = t == &PyTuple_Type ? ((PyTupleObject *)v)->ob_item
                                              : ((PyListObject *)v)->ob_item;
        if (n > INT32_MAX) return STOP;
        int rc;
        if (t == &PyTuple_Type && n < 256) {
            if (buf_grow(b, 2) < 0) return -1;
            b->p[b->n++] = ')';
            b->p[b->n++] = (char)n;
        } else if (f_u32(b, t == &PyTuple_Type ? '(' : '[', (uint32_t)n) < 0) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++)
            if ((rc = f_put_value(b, items[i], depth + 1)) != 0) return rc;
        return 0;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *key, *val;
        int rc;
        if (buf_putc(b, '{') < 0) return -1;
        while (PyDict_Next(v, &pos, &key, &val)) {
            if (Py_TYPE(key) != &PyUnicode_Type) return STOP;
            if ((rc = f_put_str(b, key)) != 0 || (rc = f_put_value(b, val, depth + 1)) != 0)
                return rc;
        }
        return buf_putc(b, '0');
    }
    return STOP;
}

/* Open a frame (its head written) unless one is. */
static inline int f_open(FrameEmitter *self) {
    if (self->frame.n) return 0;
    if (buf_grow(&self->frame, F_FRAME_HEAD) < 0) return -1;
    memset(self->frame.p, 0, F_FRAME_HEAD);
    self->frame.p[0] = '[';
    self->frame.n = F_FRAME_HEAD;
    self->open_n = 0;
    return 0;
}

/* One event's bytes are in the frame from ``at`` on: count it; the frame's first event puts
 * the emitter in the queue in the frame's place (deque.append: C, runs no Python code). */
static int f_counted(FrameEmitter *self) {
    if (self->open_n == 0) {
        PyObject *r = PyObject_CallOneArg(self->append, (PyObject *)self);
        if (!r) {
            self->frame.n = 0;
            f_refs_drop(self, 0);
            return -1;
        }
        Py_DECREF(r);
    }
    self->open_n++;
    f_le32(self->frame.p + 1, (uint32_t)self->open_n);
    return 0;
}

/* Seal the frame being filled: its bytes take the emitter's place in the queue (its last
 * item). No Python code runs (bytes are not collector-tracked; deque.pop and append are C). */
static int f_seal(FrameEmitter *self) {
    if (!self->frame.n) return 0;
    PyObject *data = PyBytes_FromStringAndSize(self->frame.p, self->frame.n);
    if (!data) return -1;
    PyObject *last = PyObject_CallNoArgs(self->pop);
    if (!last) {
        Py_DECREF(data);
        return -1;
    }
    if (last != (PyObject *)self) {
        /* Someone else popped the queue: put back what we took, lose nothing. */
        PyObject *r = PyObject_CallOneArg(self->append, last);
        Py_DECREF(last);
        Py_XDECREF(r);
        Py_DECREF(data);
        if (r) PyErr_SetString(PyExc_RuntimeError, "FrameEmitter: the frame being filled "
                               "is not the queue's last item (only put() may add to it)");
        return -1;
    }
    Py_DECREF(last);
    PyObject *r = PyObject_CallOneArg(self->append, data);
    Py_DECREF(data);
    if (!r) return -1; /* out of memory in deque.append: the frame is lost, and said so */
    Py_DECREF(r);
    self->frame.n = 0;
    self->open_n = 0;
    f_refs_drop(self, 0);
    if (self->frame.cap > F_KEEP_BYTES) { /* a backlog's frame: give its memory back */
        PyMem_RawFree(self->frame.p);
        self->frame.p = NULL;
        self->frame.cap = 0;
    }
    return 0;
}

/* Seal the frame and queue ``obj`` behind it (in this order, atomically). */
static int f_put(FrameEmitter *self, PyObject *obj) {
    if (f_seal(self) < 0) return -1;
    PyObject *r = PyObject_CallOneArg(self->append, obj);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* The slow path: the event as the tuple the Python emit queues; its marshal.dumps(item, 2)
 * goes into the frame, or, where marshal refuses it, the tuple itself behind the frame. */
static int f_emit_object(FrameEmitter *self, PyObject *ts, PyObject *kind, PyObject *rid,
                         PyObject *const *vals, PyObject *kwnames, Py_ssize_t nkw,
                         Py_ssize_t skip) {
    PyObject *attrs = PyDict_New(), *item = NULL, *data = NULL;
    int rc = -1;
    if (!attrs) return -1;
    for (Py_ssize_t i = 0; i < nkw; i++)
        if (i != skip && PyDict_SetItem(attrs, PyTuple_GET_ITEM(kwnames, i), vals[i]) < 0)
            goto done;
    if (!(item = PyTuple_Pack(4, ts, kind, rid, attrs))) goto done;
    data = PyMarshal_WriteObjectToString(item, 2);
    if (data) {
        /* No Python code from here to the count (bytes are not collector-tracked). */
        if (f_open(self) < 0 ||
            buf_put(&self->frame, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0)
            goto done;
        rc = f_counted(self);
    } else if (PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        rc = f_put(self, item);
    }
done:
    Py_XDECREF(data);
    Py_XDECREF(item);
    Py_DECREF(attrs);
    return rc;
}

static PyObject *frame_emitter_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    FrameEmitter *self = (FrameEmitter *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "emit() takes 1 or 2 positional arguments (kind, "
                     "request_id) but %zd were given", nargs);
        return NULL;
    }
    PyObject *kind = args[0], *rid = nargs == 2 ? args[1] : Py_None;
    PyObject *const *vals = args + nargs;
    Py_ssize_t skip = -1; /* the keyword that was request_id */
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (is_name(name, request_id_str)) {
            if (nargs == 2 || skip >= 0) {
                PyErr_SetString(PyExc_TypeError, "emit() got multiple values for argument "
                                "'request_id'");
                return NULL;
            }
            rid = vals[i];
            skip = i;
        } else if (is_name(name, kind_str)) {
            PyErr_SetString(PyExc_TypeError, "emit() got multiple values for argument 'kind'");
            return NULL;
        }
    }
    long long t = 0;
    PyObject *ts = NULL;
    int rc;
    if (self->monotonic) { /* what time.monotonic_ns reads, without an int object */
        struct timespec tp;
        if (clock_gettime(CLOCK_MONOTONIC, &tp) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        t = (long long)tp.tv_sec * 1000000000LL + tp.tv_nsec;
    } else {
        /* Python code may run here (a VirtualClock's now_ns); nothing is written yet. */
        if (!(ts = PyObject_CallNoArgs(self->now))) return NULL;
        int overflow = 1;
        if (Py_TYPE(ts) == &PyLong_Type) {
            t = PyLong_AsLongLongAndOverflow(ts, &overflow);
            if (t == -1 && PyErr_Occurred()) goto fail;
        }
        if (overflow) goto slow; /* not an int64: the slow path writes what now() gave */
    }
    /* The fast path, straight into the frame: no Python code from here to the count. */
    buf *b = &self->frame;
    if (f_open(self) < 0) goto fail;
    Py_ssize_t mark = b->n;
    int refs_mark = self->nrefs;
    if (buf_grow(b, 2) < 0) goto undo;
    b->p[b->n++] = ')';
    b->p[b->n++] = 4;
    if ((rc = f_put_int(b, t)) != 0 ||
        (rc = Py_TYPE(kind) == &PyUnicode_Type ? f_put_name(self, b, kind) : STOP) != 0 ||
        (rc = f_put_value(b, rid, F_DEPTH_MAX)) != 0 || /* a scalar */
        (rc = buf_putc(b, '{')) != 0)
        goto check;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (i == skip) continue;
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if ((rc = Py_TYPE(name) == &PyUnicode_Type ? f_put_name(self, b, name) : STOP) != 0 ||
            (rc = f_put_value(b, vals[i], 1)) != 0)
            goto check;
    }
    if ((rc = buf_putc(b, '0')) != 0) goto check;
    if (f_counted(self) < 0) goto fail;
    goto written;
check:
    b->n = self->open_n ? mark : 0; /* the event's bytes out; a frame it opened closed */
    f_refs_drop(self, refs_mark);
    if (rc < 0) goto fail;
slow:
    if (!ts && !(ts = PyLong_FromLongLong(t))) goto fail;
    if (f_emit_object(self, ts, kind, rid, vals, kwnames, nkw, skip) < 0) goto fail;
written:
    Py_XDECREF(ts);
    if (++self->pending > self->bound) {
        PyObject *r = PyObject_CallNoArgs(self->overflow);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
undo:
    b->n = self->open_n ? mark : 0;
    f_refs_drop(self, refs_mark);
fail:
    Py_XDECREF(ts);
    return NULL;
}

static PyObject *frame_emitter_put(FrameEmitter *self, PyObject *obj) {
    if (f_put(self, obj) < 0) return NULL;
    Py_RETURN_NONE;
}

/* take() -> list: everything queued, in order, the frame being filled sealed. The list is
 * made first: from then on no Python code runs until the queue is empty, so no other
 * thread's event can land in a frame already taken. */
static PyObject *frame_emitter_take(FrameEmitter *self, PyObject *unused) {
    (void)unused;
    PyObject *items = PyList_New(0);
    if (!items) return NULL;
    if (f_seal(self) < 0) goto fail;
    for (;;) {
        Py_ssize_t n = PyObject_Size(self->queue);
        if (n < 0) goto fail;
        if (n == 0) break;
        PyObject *it = PyObject_CallNoArgs(self->popleft);
        if (!it) goto fail;
        int rc = PyList_Append(items, it);
        Py_DECREF(it);
        if (rc < 0) goto fail;
    }
    self->pending = 0;
    return items;
fail:
    Py_DECREF(items);
    return NULL;
}

static PyObject *frame_emitter_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *now, *queue, *overflow;
    Py_ssize_t bound;
    static char *names[] = {"now", "queue", "bound", "overflow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOnO", names, &now, &queue, &bound, &overflow))
        return NULL;
    if (!PyCallable_Check(now) || !PyCallable_Check(overflow)) {
        PyErr_SetString(PyExc_TypeError, "now and overflow must be callable");
        return NULL;
    }
    PyObject *time_mod = PyImport_ImportModule("time");
    if (!time_mod) return NULL;
    PyObject *mono = PyObject_GetAttrString(time_mod, "monotonic_ns");
    Py_DECREF(time_mod);
    if (!mono) return NULL;
    int monotonic = now == mono;
    Py_DECREF(mono);
    PyObject *append = PyObject_GetAttrString(queue, "append");
    if (!append) return NULL;
    PyObject *pop = PyObject_GetAttrString(queue, "pop");
    PyObject *popleft = pop ? PyObject_GetAttrString(queue, "popleft") : NULL;
    FrameEmitter *self = popleft ? (FrameEmitter *)type->tp_alloc(type, 0) : NULL;
    if (!self) {
        Py_DECREF(append);
        Py_XDECREF(pop);
        Py_XDECREF(popleft);
        return NULL;
    }
    Py_INCREF(now);
    Py_INCREF(queue);
    Py_INCREF(overflow);
    self->now = now;
    self->queue = queue;
    self->append = append;
    self->pop = pop;
    self->popleft = popleft;
    self->overflow = overflow;
    self->bound = bound;
    self->monotonic = monotonic;
    self->vectorcall = frame_emitter_vectorcall;
    return (PyObject *)self;
}

static int frame_emitter_traverse(FrameEmitter *self, visitproc visit, void *arg) {
    Py_VISIT(self->now);
    Py_VISIT(self->queue);
    Py_VISIT(self->append);
    Py_VISIT(self->pop);
    Py_VISIT(self->popleft);
    Py_VISIT(self->overflow);
    return 0; /* refs: strs only, which can be in no cycle */
}

static int frame_emitter_clear(FrameEmitter *self) {
    f_refs_drop(self, 0);
    Py_CLEAR(self->now);
    Py_CLEAR(self->queue);
    Py_CLEAR(self->append);
    Py_CLEAR(self->pop);
    Py_CLEAR(self->popleft);
    Py_CLEAR(self->overflow);
    return 0;
}

static void frame_emitter_dealloc(FrameEmitter *self) {
    PyObject_GC_UnTrack(self);
    frame_emitter_clear(self);
    PyMem_RawFree(self->frame.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *frame_emitter_pending(FrameEmitter *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->pending);
}

static PyMethodDef frame_emitter_methods[] = {
    {"put", (PyCFunction)frame_emitter_put, METH_O,
     "Seal the frame being filled and queue obj behind it."},
    {"take", (PyCFunction)frame_emitter_take, METH_NOARGS,
     "Seal the frame being filled; pop and return everything queued, in order."},
    {NULL, NULL, 0, NULL},
};

static PyObject *frame_emitter_get_bound(FrameEmitter *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->bound);
}

/* The ledger's shipper sets it to 0 when the runtime went quiet (overflow() then runs at the
 * next event, in the emitting thread, so the shipper need not wake to look) and back. */
static int frame_emitter_set_bound(FrameEmitter *self, PyObject *v, void *closure) {
    (void)closure;
    if (!v || !PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "bound must be an int");
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "bound must be >= 0");
        return -1;
    }
    self->bound = n;
    return 0;
}

static PyGetSetDef frame_emitter_getset[] = {
    {"pending", (getter)frame_emitter_pending, NULL, "events emitted since the last take()",
     NULL},
    {"bound", (getter)frame_emitter_get_bound, (setter)frame_emitter_set_bound,
     "overflow() runs when an emit makes pending exceed this", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrameEmitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvledger.ledger._fastenc.FrameEmitter",
    .tp_doc = "emit(kind, request_id=None, **attrs) writing marshal frames (process mode).",
    .tp_basicsize = sizeof(FrameEmitter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = frame_emitter_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FrameEmitter, vectorcall),
    .tp_traverse = (traverseproc)frame_emitter_traverse,
    .tp_clear = (inquiry)frame_emitter_clear,
    .tp_dealloc = (destructor)frame_emitter_dealloc,
    .tp_methods = frame_emitter_methods,
    .tp_getset = frame_emitter_getset,
};

static PyMethodDef methods[] = {
    {"set_kinds", set_kinds, METH_O, "Install the kind table: {kind: (scoped, ((name, type, optional), ...))}."},
    {"encode", encode, METH_VARARGS, "Check, encode and chain a group's plain events into Arrow buffers."},
    {"encode_marshal", encode_marshal, METH_VARARGS, "encode, reading the events of marshal.dumps(items) frames in place."},
    {"events", events, METH_VARARGS, "Check, encode and chain plain events into stored Events."},
    {"page_events", page_events, METH_VARARGS, "Stored columns of a page -> Events (sources.page_events_py)."},
    {"fold_setup", fold_setup, METH_VARARGS, "Install the projection's compiled handlers (ledger/fold_pages.py)."},
    {"fold_page", fold_page, METH_VARARGS, "Fold a stored page into a projection's worker (Projection._fold)."},
    {"digest", digest, METH_O, "BLAKE2b-16 of each event's stream, seq and hash lines (ledger_digest)."},
    {"hash_each", hash_each, METH_VARARGS, "BLAKE2b-16 hex of each string of an Arrow string array."},
    {"blake2b16", blake2b16, METH_VARARGS, "BLAKE2b, 16-byte digest, optionally keyed (hex)."},
    {"draw_tokens", draw_tokens, METH_VARARGS, "workload._draw(_random.Random(seed), n)."},
    {"spec_chain", spec_chain, METH_VARARGS, "blocks._chain of a prefix's tokens and a seed's."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastenc", "The ledger writer's per-event work in C (see mapper).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastenc(void) {
    mt_init_genrand(&mt_start, 19650218U);
    request_id_str = PyUnicode_InternFromString("request_id");
    kind_str = PyUnicode_InternFromString("kind");
    if (!request_id_str || !kind_str || PyType_Ready(&EmitterType) < 0 ||
        PyType_Ready(&FrameEmitterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EmitterType);
    if (PyModule_AddObject(m, "Emitter", (PyObject *)&EmitterType) < 0) {
        Py_DECREF(&EmitterType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FrameEmitterType);
    if (PyModule_AddObject(m, "FrameEmitter", (PyObject *)&FrameEmitterType) < 0) {
        Py_DECREF(&FrameEmitterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
