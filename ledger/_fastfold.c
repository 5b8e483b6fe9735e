/* The projection's fold of a stored page, without an Event per row (#included by _fastenc.c: it
 * reads pages with the page reader's row reader and kind table).
 *
 * ``projections.Projection._fold`` is the definition. This loop does what it does for one
 * stream's page, row by row, on the same Python objects (the WorkerState, its requests dict,
 * RequestState and SlotPool, their slots written in place), for the rows whose kind's handler is
 * one of the handlers compiled here and whose attrs text the page reader takes (canonical: so
 * an accepted row is exactly one the definition accepts, with the same attributes). Every other
 * row is ``slow(i)``, which folds row i the definition's way (an Event made by the definition, or
 * its error). Both ways work on the same state, so they mix at any row. Which kind has which
 * handler comes from Python (ledger/fold_pages.py maps the Projection's handler functions, not
 * kind names), and tests/ledger/test_fold_pages.py holds the two folds equal.
 */

enum {
    F_NONE, /* no handler and no owner change: the row is checked and changes nothing */
    F_SLOW, /* the definition folds it (slow(i)) */
    F_NOP,  /* owner changes only */
    F_ARRIVED, F_BLOCKS_REF, F_BLOCKS_FREED, F_PINNED, F_UNPINNED, F_ACQUIRED, F_RELEASED,
    F_EXHAUSTED, F_STARTED, F_ADVERTISED, F_READY, F_POSTED, F_POLLED, F_XRELEASED,
    F_COMPLETED, F_FULFILLED, F_CANCEL_RESULT, F_TERM_REQUESTED, F_TERM_DEFERRED, F_TERM_DONE,
    F_FREED, F_Q_ENTERED, F_Q_LEFT, F_FINISHED, F_CODES
};

/* The handler names Python maps its handlers to, in enum order. */
static const char *fold_code_names[F_CODES] = {
    "none", "slow", "nop", "arrived", "blocks_ref", "blocks_freed", "pinned", "unpinned",
    "acquired", "released", "exhausted", "started", "advertised", "ready", "posted", "polled",
    "xreleased", "completed", "fulfilled", "cancel_result", "termination_requested",
    "termination_deferred", "termination_done", "freed", "quarantine_entered",
    "quarantine_left", "finished",
};

/* RequestState's slots, by name, in this order. */
enum {
    R_STREAM, R_REQUEST_ID, R_ROLE, R_OWNERS, R_FIRST_NS, R_TERM_REQUESTED, R_TERM_DEFERRED,
    R_TERM_DONE, R_TERM_NS, R_RESOURCES_FREED, R_TRANSFER, R_READY_SIGNAL, R_CANCEL_RESULT,
    R_QUARANTINED, R_ARRIVED, R_FINISHED, R_BLOCK_REFS, R_BLOCKS_NS, R_PINS, R_PINS_NS, R_SLOTS,
    R_HANDLES, R_PROMISE_NS, R_FULFILLED, R_FIELDS
};
static const char *request_fields[R_FIELDS] = {
    "stream", "request_id", "role", "owners", "first_ns", "termination_requested",
    "termination_deferred", "termination_done", "termination_ns", "resources_freed", "transfer",
    "ready_signal", "cancel_result", "quarantined", "arrived", "finished", "block_refs",
    "blocks_ns", "pins", "pins_ns", "slots", "handles", "promise_ns", "fulfilled",
};
enum { P_HELD, P_WAITING, P_FIELDS };
static const char *pool_fields[P_FIELDS] = {"held", "waiting"};
enum { W_POOLS, W_IN_FLIGHT, W_QUARANTINED, W_FIELDS };
static const char *worker_fields[W_FIELDS] = {"pools", "in_flight", "quarantined"};

/* The attributes each compiled handler reads, with the schema type its code expects: a kind
 * whose schema says otherwise (or makes one optional) is folded by the definition. */
typedef struct {
    const char *name;
    int type;
} fold_read;
static const fold_read fold_reads[F_CODES][2] = {
    [F_BLOCKS_REF] = {{"blocks", T_INTS}},
    [F_BLOCKS_FREED] = {{"blocks", T_INTS}},
    [F_PINNED] = {{"blocks", T_INTS}},
    [F_UNPINNED] = {{"blocks", T_INTS}},
    [F_ACQUIRED] = {{"pool", T_STR}, {"slot", T_INT}},
    [F_RELEASED] = {{"pool", T_STR}, {"slot", T_INT}},
    [F_EXHAUSTED] = {{"pool", T_STR}},
    [F_STARTED] = {{"role", T_STR}},
    [F_READY] = {{"signal", T_STR}},
    [F_POSTED] = {{"handle", T_INT}},
    [F_POLLED] = {{"handle", T_INT}, {"state", T_STR}},
    [F_XRELEASED] = {{"handle", T_INT}},
    [F_COMPLETED] = {{"outcome", T_STR}},
    [F_FULFILLED] = {{"side", T_STR}, {"outcome", T_STR}},
    [F_CANCEL_RESULT] = {{"result", T_STR}},
    [F_FINISHED] = {{"outcome", T_STR}},
};

#define MAX_ATTRS 32 /* a kind with more attributes is folded by the definition */

typedef struct {
    int code;
    int at[2]; /* the kind's attribute index of each read (fold_reads), -1: none */
    int nops;
    int op_index[4];
    PyObject *op_owner[4]; /* borrowed from fold_ops */
} fold_entry;

static struct {
    unsigned long generation; /* of the kind table fold_setup saw (set_kinds again: set up again) */
    fold_entry *entry;      /* per kind index */
    PyObject *ops;          /* keeps the owners alive */
    PyTypeObject *request_type, *worker_type, *pool_type;
    PyObject *template;     /* a fresh RequestState: the defaults of every slot */
    Py_ssize_t r[R_FIELDS], p[P_FIELDS], w[W_FIELDS];
    /* the values the handlers store or compare with, and the name of WorkerState.pool */
    PyObject *started, *advertised, *in_flight, *posted, *done, *err, *transceiver, *pool_method;
} fold;

#define FIELD(o, off) (*(PyObject **)((char *)(o) + (off)))
#define R(o, f) FIELD(o, fold.r[f])

/* A slot set to v (a new reference, stolen). */
static inline void slot_put(PyObject *o, Py_ssize_t off, PyObject *v) {
    PyObject *old = FIELD(o, off);
    FIELD(o, off) = v;
    Py_XDECREF(old);
}
#define R_PUT(o, f, v) slot_put(o, fold.r[f], v)

/* Python's truth of a slot's value: -1 on error. */
static inline int truthy(PyObject *v) {
    if (v == Py_None || v == Py_False) return 0;
    if (v == Py_True) return 1;
    if (PyDict_CheckExact(v)) return PyDict_GET_SIZE(v) > 0;
    return PyObject_IsTrue(v);
}

/* The member descriptors' offsets of ``type``'s named slots (each an object slot). */
static int slot_offsets(PyTypeObject *type, const char **names, int n, Py_ssize_t *out) {
    for (int i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttrString((PyObject *)type, names[i]);
        if (!d) return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) out[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "fold_setup: %s.%s is not an object slot",
                         type->tp_name, names[i]);
            return -1;
        }
    }
    return 0;
}

/* A value's text s[a:b] in an attrs text (a == -1: the attribute is absent). */
typedef struct {
    Py_ssize_t a, b;
} span;

/* parse_attrs' check of the attrs text s[0:n] of kind k, without making the dict: each
 * attribute's value text in sp (k->nattrs of them, in the kind's order). */
static int scan_attrs(const kind_spec *k, const char *s, Py_ssize_t n, span *sp) {
    if (n < 2 || s[0] != '{') return STOP;
    Py_ssize_t i = 1;
    int first = 1;
    for (int j = 0; j < k->nattrs; j++) {
        const attr_spec *a = &k->attrs[j];
        Py_ssize_t at = i + (first ? 0 : 1);
        int here = (first || (i < n && s[i] == ',')) && n - at >= a->keylen &&
                   memcmp(s + at, a->key, (size_t)a->keylen) == 0;
        sp[j].a = sp[j].b = -1;
        if (!here) {
            if (a->optional) continue;
            return STOP;
        }
        i = at + a->keylen;
        sp[j].a = i;
        int rc = parse_value(s, n, &i, a->type, NULL);
        if (rc) return rc;
        sp[j].b = i;
        first = 0;
    }
    return i == n - 1 && s[i] == '}' ? 0 : STOP;
}

/* Short str values (outcomes, pools, states) made once: a direct-mapped cache by their bytes. */
typedef struct {
    Py_ssize_t n;
    char b[32];
    PyObject *str;
} str_slot;
static str_slot str_cache[256];

static PyObject *cached_str(const char *p, Py_ssize_t n) {
    if (n > 32) return PyUnicode_DecodeUTF8(p, n, NULL);
    str_slot *c = &str_cache[fnv1a(p, n) & 255];
    if (c->str && c->n == n && memcmp(c->b, p, (size_t)n) == 0) return Py_NewRef(c->str);
    PyObject *str = PyUnicode_DecodeUTF8(p, n, NULL);
    if (!str) return NULL;
    Py_XSETREF(c->str, Py_NewRef(str));
    c->n = n;
    memcpy(c->b, p, (size_t)n);
    return str;
}

/* The value (new reference) of a checked attribute's text s[sp] of type ``type``. */
static PyObject *span_value(const char *s, span sp, int type) {
    Py_ssize_t i = sp.a;
    long long x;
    switch (type) {
        case T_INT:
            parse_int(s, sp.b, &i, &x);
            return PyLong_FromLongLong(x);
        case T_STR:
            return cached_str(s + sp.a + 1, sp.b - sp.a - 2);
        case T_INTS: {
            PyObject *list = PyList_New(0);
            for (i++; list && s[i] != ']';) { /* checked: ints separated by ',' */
                parse_int(s, sp.b, &i, &x);
                PyObject *e = PyLong_FromLongLong(x);
                if (!e || PyList_Append(list, e) < 0) Py_CLEAR(list);
                Py_XDECREF(e);
                if (s[i] == ',') i++;
            }
            return list;
        }
    }
    PyErr_SetString(PyExc_SystemError, "fold_page: a read of no compiled type");
    return NULL;
}

static void fold_clear(void) {
    PyMem_Free(fold.entry);
    fold.entry = NULL;
    Py_CLEAR(fold.ops);
    Py_CLEAR(fold.template);
    Py_CLEAR(fold.request_type);
    Py_CLEAR(fold.worker_type);
    Py_CLEAR(fold.pool_type);
}

/* fold_setup(entries, request_type, worker_type, pool_type, template, values)
 * ``entries``: {kind: (handler name, ((resource index, owner), ...))}; ``template``: a fresh
 * RequestState; ``values``: the strs the handlers store or compare (see below). */
static PyObject *fold_setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *entries, *template, *values;
    PyTypeObject *rt, *wt, *pt;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OO!", &PyDict_Type, &entries, &PyType_Type, &rt,
                          &PyType_Type, &wt, &PyType_Type, &pt, &template, &PyDict_Type,
                          &values))
        return NULL;
    if (!kind_index) {
        PyErr_SetString(PyExc_RuntimeError, "_fastenc.set_kinds was not called");
        return NULL;
    }
    fold_clear();
    if (!Py_IS_TYPE(template, rt)) {
        PyErr_SetString(PyExc_TypeError, "fold_setup: the template is not a request_type");
        return NULL;
    }
    if (slot_offsets(rt, request_fields, R_FIELDS, fold.r) < 0 ||
        slot_offsets(pt, pool_fields, P_FIELDS, fold.p) < 0 ||
        slot_offsets(wt, worker_fields, W_FIELDS, fold.w) < 0)
        return NULL;
    for (int f = 0; f < R_FIELDS; f++)
        if (!R(template, f) || (f == R_OWNERS && !PyList_CheckExact(R(template, f)))) {
            PyErr_Format(PyExc_TypeError, "fold_setup: the template's %s is not set as expected",
                         request_fields[f]);
            return NULL;
        }
    fold.entry = PyMem_Calloc((size_t)(nkinds ? nkinds : 1), sizeof(fold_entry));
    fold.ops = PyList_New(0);
    if (!fold.entry || !fold.ops) goto fail;
    for (Py_ssize_t i = 0; i < nkinds; i++) fold.entry[i].code = F_SLOW;
    Py_ssize_t pos = 0;
    PyObject *kind, *spec;
    while (PyDict_Next(entries, &pos, &kind, &spec)) {
        PyObject *name, *ops;
        if (!PyArg_ParseTuple(spec, "UO!", &name, &PyTuple_Type, &ops)) goto fail;
        PyObject *idx = PyDict_GetItemWithError(kind_index, kind);
        if (!idx) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "fold_setup: unknown kind %R", kind);
            goto fail;
        }
        fold_entry *e = &fold.entry[PyLong_AsSsize_t(idx)];
        e->code = -1;
        for (int c = 0; c < F_CODES; c++)
            if (PyUnicode_CompareWithASCIIString(name, fold_code_names[c]) == 0) e->code = c;
        if (e->code < 0 || PyTuple_GET_SIZE(ops) > 4) {
            PyErr_Format(PyExc_ValueError, "fold_setup: a bad entry for %R", kind);
            goto fail;
        }
        const kind_spec *k = &kinds[PyLong_AsSsize_t(idx)];
        for (int j = 0; j < 2; j++) {
            const fold_read *rd = &fold_reads[e->code][j];
            e->at[j] = -1;
            if (!rd->name) continue;
            for (int a = 0; a < k->nattrs; a++) {
                const attr_spec *as = &k->attrs[a];
                if (as->rawlen == (Py_ssize_t)strlen(rd->name) &&
                    memcmp(as->raw, rd->name, (size_t)as->rawlen) == 0 &&
                    as->type == rd->type && !as->optional)
                    e->at[j] = a;
            }
            if (e->at[j] < 0) e->code = F_SLOW; /* not the attribute the handler reads */
        }
        if (k->nattrs > MAX_ATTRS || (e->code > F_SLOW && !k->scoped)) e->code = F_SLOW;
        e->nops = (int)PyTuple_GET_SIZE(ops);
        for (int j = 0; j < e->nops; j++) {
            int at;
            PyObject *owner;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(ops, j), "iO", &at, &owner)) goto fail;
            if (at < 0 || at > 3) {
                PyErr_SetString(PyExc_ValueError, "fold_setup: a resource index out of range");
                goto fail;
            }
            if (PyList_Append(fold.ops, owner) < 0) goto fail;
            e->op_index[j] = at;
            e->op_owner[j] = owner;
        }
    }
    static const char *keys[] = {"started", "advertised", "in_flight", "posted", "DONE", "ERR",
                                 "transceiver", "pool_method"};
    PyObject **dest[] = {&fold.started, &fold.advertised, &fold.in_flight, &fold.posted,
                         &fold.done, &fold.err, &fold.transceiver, &fold.pool_method};
    for (size_t j = 0; j < sizeof keys / sizeof *keys; j++) {
        PyObject *v = PyDict_GetItemString(values, keys[j]);
        if (!v || !PyUnicode_CheckExact(v)) {
            PyErr_Format(PyExc_ValueError, "fold_setup: values lacks the str %s", keys[j]);
            goto fail;
        }
        Py_INCREF(v);
        Py_XSETREF(*dest[j], v);
    }
    Py_INCREF(rt);
    Py_INCREF(wt);
    Py_INCREF(pt);
    Py_INCREF(template);
    fold.request_type = rt;
    fold.worker_type = wt;
    fold.pool_type = pt;
    fold.template = template;
    fold.generation = kinds_generation;
    Py_RETURN_NONE;
fail:
    fold_clear();
    return NULL;
}

/* A new RequestState: the template's slots, its own owners list, stream, id and first_ns. */
static PyObject *new_request(PyObject *stream, PyObject *rid, PyObject *ts) {
    PyObject *st = fold.request_type->tp_alloc(fold.request_type, 0);
    if (!st) return NULL;
    PyObject *owners = PyList_GetSlice(R(fold.template, R_OWNERS), 0, PY_SSIZE_T_MAX);
    if (!owners) {
        Py_DECREF(st);
        return NULL;
    }
    for (int f = 0; f < R_FIELDS; f++) R(st, f) = Py_XNewRef(R(fold.template, f));
    R_PUT(st, R_STREAM, Py_NewRef(stream));
    R_PUT(st, R_REQUEST_ID, Py_NewRef(rid));
    R_PUT(st, R_FIRST_NS, Py_NewRef(ts));
    R_PUT(st, R_OWNERS, owners);
    return st;
}

/* _count_up: one more reference on each block; the container (new reference). */
static PyObject *count_up(PyObject *counts, PyObject *blocks) {
    int t = truthy(counts);
    if (t < 0) return NULL;
    PyObject *d = t ? Py_NewRef(counts) : PyDict_New();
    if (!d) return NULL;
    PyObject *one = PyLong_FromLong(1);
    if (!one) goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(blocks); i++) {
        PyObject *b = PyList_GET_ITEM(blocks, i);
        PyObject *n = PyDict_GetItemWithError(d, b);
        if (!n && PyErr_Occurred()) goto fail_one;
        PyObject *m = n ? PyNumber_Add(n, one) : Py_NewRef(one);
        if (!m) goto fail_one;
        int rc = PyDict_SetItem(d, b, m);
        Py_DECREF(m);
        if (rc < 0) goto fail_one;
    }
    Py_DECREF(one);
    return d;
fail_one:
    Py_DECREF(one);
fail:
    Py_DECREF(d);
    return NULL;
}

/* _count_down: one fewer on each block it holds (others ignored). */
static int count_down(PyObject *counts, PyObject *blocks) {
    PyObject *one = PyLong_FromLong(1);
    if (!one) return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(blocks) && !rc; i++) {
        PyObject *b = PyList_GET_ITEM(blocks, i);
        PyObject *n = PyObject_GetItem(counts, b);
        if (!n) {
            if (PyErr_ExceptionMatches(PyExc_KeyError)) PyErr_Clear();
            else rc = -1;
            continue;
        }
        int gt = PyObject_RichCompareBool(n, one, Py_GT);
        if (gt < 0) {
            rc = -1;
        } else if (gt) {
            PyObject *m = PyNumber_Subtract(n, one);
            rc = m ? PyObject_SetItem(counts, b, m) : -1;
            Py_XDECREF(m);
        } else {
            rc = PyObject_DelItem(counts, b);
        }
        Py_DECREF(n);
    }
    Py_DECREF(one);
    return rc;
}

/* The blocks (a refs or pins slot and its _ns slot) of _blocks_ref / _h_blocks_pinned. */
static int blocks_up(PyObject *st, int f, int f_ns, PyObject *blocks, PyObject *ts) {
    PyObject *refs = count_up(R(st, f), blocks);
    if (!refs) return -1;
    R_PUT(st, f, refs);
    int t = truthy(refs);
    if (t < 0) return -1;
    if (R(st, f_ns) == Py_None && t) R_PUT(st, f_ns, Py_NewRef(ts));
    return 0;
}

/* _h_blocks_freed / _h_blocks_unpinned. */
static int blocks_down(PyObject *st, int f, int f_ns, PyObject *blocks) {
    PyObject *refs = R(st, f);
    int t = truthy(refs);
    if (t <= 0) return t;
    Py_INCREF(refs);
    int rc = count_down(refs, blocks);
    if (!rc) {
        t = truthy(refs);
        if (t < 0) rc = -1;
        else if (!t) R_PUT(st, f_ns, Py_NewRef(Py_None));
    }
    Py_DECREF(refs);
    return rc;
}

/* ``w.pools.get(name) or w.pool(name)`` (new reference). */
static PyObject *worker_pool(PyObject *w, PyObject *name) {
    PyObject *pools = FIELD(w, fold.w[W_POOLS]);
    PyObject *p = PyDict_CheckExact(pools) ? PyDict_GetItemWithError(pools, name) : NULL;
    if (p && Py_IS_TYPE(p, fold.pool_type)) {
        return Py_NewRef(p); /* a SlotPool is always true */
    }
    if (!p && PyErr_Occurred()) return NULL;
    p = PyObject_CallMethodOneArg(w, fold.pool_method, name);
    if (p && !Py_IS_TYPE(p, fold.pool_type)) {
        Py_DECREF(p);
        PyErr_SetString(PyExc_TypeError, "fold_page: a pool that is not a SlotPool");
        return NULL;
    }
    return p;
}

/* ``if pool.waiting: pool.waiting.discard(rid)`` */
static int waiting_discard(PyObject *pool, PyObject *rid) {
    if (!Py_IS_TYPE(pool, fold.pool_type)) {
        PyErr_SetString(PyExc_TypeError, "fold_page: a pool that is not a SlotPool");
        return -1;
    }
    PyObject *waiting = FIELD(pool, fold.p[P_WAITING]);
    int t = truthy(waiting);
    if (t <= 0) return t;
    return PySet_Discard(waiting, rid) < 0 ? -1 : 0;
}

/* A worker set slot (in_flight, quarantined): add or discard rid. */
static int worker_set(PyObject *w, int f, PyObject *rid, int add) {
    PyObject *s = FIELD(w, fold.w[f]);
    if (add) return PySet_Add(s, rid);
    return PySet_Discard(s, rid) < 0 ? -1 : 0;
}

/* A (dict) slot of st, made {} when it is None: borrowed. */
static PyObject *dict_slot(PyObject *st, int f) {
    PyObject *d = R(st, f);
    if (d == Py_None) {
        d = PyDict_New();
        if (!d) return NULL;
        R_PUT(st, f, d);
    }
    return d;
}

/* _slot_gone (buffer.released). */
static int slot_gone(PyObject *st, PyObject *w, PyObject *name, PyObject *slot) {
    PyObject *slots = R(st, R_SLOTS);
    int t = truthy(slots);
    if (t <= 0) return t;
    PyObject *key = PyTuple_Pack(2, name, slot);
    if (!key) return -1;
    PyObject *had = PyObject_GetItem(slots, key);
    int rc = 0;
    if (!had) {
        if (PyErr_ExceptionMatches(PyExc_KeyError)) PyErr_Clear();
        else rc = -1;
        Py_DECREF(key);
        return rc;
    }
    rc = PyObject_DelItem(slots, key);
    Py_DECREF(key);
    if (rc < 0 || had == Py_None) { /* slots.pop(...) is None: not held (never stored so) */
        Py_DECREF(had);
        return rc;
    }
    Py_DECREF(had);
    PyObject *pool = worker_pool(w, name);
    if (!pool) return -1;
    PyObject *held = FIELD(pool, fold.p[P_HELD]);
    PyObject *holder = PyDict_CheckExact(held) ? PyDict_GetItemWithError(held, slot) : NULL;
    if (holder) {
        int eq = PyObject_RichCompareBool(holder, R(st, R_REQUEST_ID), Py_EQ);
        rc = eq < 0 ? -1 : eq ? PyDict_DelItem(held, slot) : 0;
    } else if (PyErr_Occurred() || !PyDict_CheckExact(held)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "fold_page: a pool's held is not a dict");
        rc = -1;
    }
    Py_DECREF(pool);
    return rc;
}

/* The handler ``code`` of a request's row, given the attributes it reads (fold_reads): 0 or -1. */
static int fold_handle(int code, PyObject *st, PyObject *w, PyObject *const val[2],
                       long long ts_ll) {
    PyObject *ts = NULL;
    int rc = 0;
#define TS (ts ? ts : (ts = PyLong_FromLongLong(ts_ll)))
    switch (code) {
        case F_NOP:
            break;
        case F_ARRIVED:
            R_PUT(st, R_ARRIVED, Py_NewRef(Py_True));
            break;
        case F_BLOCKS_REF:
            rc = TS ? blocks_up(st, R_BLOCK_REFS, R_BLOCKS_NS, val[0], ts) : -1;
            break;
        case F_PINNED:
            rc = TS ? blocks_up(st, R_PINS, R_PINS_NS, val[0], ts) : -1;
            break;
        case F_BLOCKS_FREED:
            rc = blocks_down(st, R_BLOCK_REFS, R_BLOCKS_NS, val[0]);
            break;
        case F_UNPINNED:
            rc = blocks_down(st, R_PINS, R_PINS_NS, val[0]);
            break;
        case F_ACQUIRED: {
            PyObject *name = val[0], *slot = val[1];
            PyObject *pool = worker_pool(w, name);
            PyObject *slots = pool ? dict_slot(st, R_SLOTS) : NULL;
            PyObject *key = slots ? PyTuple_Pack(2, name, slot) : NULL;
            rc = key && TS && PyObject_SetItem(slots, key, ts) == 0 &&
                         PyObject_SetItem(FIELD(pool, fold.p[P_HELD]), slot,
                                          R(st, R_REQUEST_ID)) == 0 &&
                         waiting_discard(pool, R(st, R_REQUEST_ID)) == 0
                     ? 0
                     : -1;
            Py_XDECREF(key);
            Py_XDECREF(pool);
            break;
        }
        case F_RELEASED:
            rc = slot_gone(st, w, val[0], val[1]);
            break;
        case F_EXHAUSTED: {
            PyObject *pool = worker_pool(w, val[0]);
            rc = pool ? PySet_Add(FIELD(pool, fold.p[P_WAITING]), R(st, R_REQUEST_ID)) : -1;
            Py_XDECREF(pool);
            break;
        }
        case F_STARTED:
            R_PUT(st, R_ROLE, Py_NewRef(val[0]));
            R_PUT(st, R_TRANSFER, Py_NewRef(fold.started));
            if (R(st, R_PROMISE_NS) == Py_None) {
                if (!TS) return -1;
                R_PUT(st, R_PROMISE_NS, Py_NewRef(ts));
            }
            rc = worker_set(w, W_IN_FLIGHT, R(st, R_REQUEST_ID), 1);
            break;
        case F_ADVERTISED:
            R_PUT(st, R_TRANSFER, Py_NewRef(fold.advertised));
            break;
        case F_READY:
            R_PUT(st, R_READY_SIGNAL, Py_NewRef(val[0]));
            break;
        case F_POSTED: {
            PyObject *handles = dict_slot(st, R_HANDLES);
            PyObject *h = handles && TS ? PyList_New(2) : NULL;
            if (!h) {
                rc = -1;
                break;
            }
            PyList_SET_ITEM(h, 0, Py_NewRef(fold.posted));
            PyList_SET_ITEM(h, 1, Py_NewRef(ts));
            rc = PyObject_SetItem(handles, val[0], h);
            Py_DECREF(h);
            if (!rc) R_PUT(st, R_TRANSFER, Py_NewRef(fold.in_flight));
            break;
        }
        case F_POLLED: {
            PyObject *state = val[1], *handles = R(st, R_HANDLES);
            int t = truthy(handles);
            if (t < 0) return -1;
            if (t) {
                PyObject *h = PyObject_GetItem(handles, val[0]);
                if (h) {
                    rc = PySequence_SetItem(h, 0, state);
                    Py_DECREF(h);
                } else if (PyErr_ExceptionMatches(PyExc_KeyError)) {
                    PyErr_Clear();
                } else {
                    rc = -1;
                }
            }
            if (!rc && (PyUnicode_Compare(state, fold.done) == 0 ||
                        PyUnicode_Compare(state, fold.err) == 0)) {
                PyObject *owners = R(st, R_OWNERS);
                rc = PySequence_SetItem(owners, 3, fold.transceiver) < 0 ||
                             PySequence_SetItem(owners, 2, fold.transceiver) < 0
                         ? -1
                         : 0;
            }
            break;
        }
        case F_XRELEASED: {
            PyObject *handles = R(st, R_HANDLES);
            int t = truthy(handles);
            if (t <= 0) return t;
            rc = PyDict_CheckExact(handles) ? 0 : -1;
            if (!rc) {
                int has = PyDict_Contains(handles, val[0]);
                rc = has < 0 ? -1 : has ? PyDict_DelItem(handles, val[0]) : 0;
            } else {
                PyErr_SetString(PyExc_TypeError, "fold_page: handles is not a dict");
            }
            break;
        }
        case F_COMPLETED:
            R_PUT(st, R_TRANSFER, Py_NewRef(val[0]));
            rc = worker_set(w, W_IN_FLIGHT, R(st, R_REQUEST_ID), 0);
            break;
        case F_FULFILLED: {
            PyObject *f = dict_slot(st, R_FULFILLED);
            rc = f ? PyObject_SetItem(f, val[0], val[1]) : -1;
            if (!rc) R_PUT(st, R_PROMISE_NS, Py_NewRef(Py_None));
            break;
        }
        case F_CANCEL_RESULT:
            R_PUT(st, R_CANCEL_RESULT, Py_NewRef(val[0]));
            break;
        case F_TERM_REQUESTED:
        case F_TERM_DEFERRED: {
            int req = truthy(R(st, R_TERM_REQUESTED)), done = truthy(R(st, R_TERM_DONE));
            if (req < 0 || done < 0) return -1;
            if (!req || done) { /* no open obligation yet */
                if (!TS) return -1;
                R_PUT(st, R_TERM_NS, Py_NewRef(ts));
            }
            R_PUT(st, R_TERM_REQUESTED, Py_NewRef(Py_True));
            R_PUT(st, R_TERM_DONE, Py_NewRef(Py_False));
            if (code == F_TERM_DEFERRED) R_PUT(st, R_TERM_DEFERRED, Py_NewRef(Py_True));
            break;
        }
        case F_TERM_DONE:
            R_PUT(st, R_TERM_DONE, Py_NewRef(Py_True));
            R_PUT(st, R_TERM_NS, Py_NewRef(Py_None));
            break;
        case F_FREED:
            R_PUT(st, R_RESOURCES_FREED, Py_NewRef(Py_True));
            break;
        case F_Q_ENTERED:
            R_PUT(st, R_QUARANTINED, Py_NewRef(Py_True));
            rc = worker_set(w, W_QUARANTINED, R(st, R_REQUEST_ID), 1);
            break;
        case F_Q_LEFT:
            R_PUT(st, R_QUARANTINED, Py_NewRef(Py_False));
            rc = worker_set(w, W_QUARANTINED, R(st, R_REQUEST_ID), 0);
            break;
        case F_FINISHED: {
            R_PUT(st, R_FINISHED, Py_NewRef(val[0]));
            PyObject *id = R(st, R_REQUEST_ID);
            rc = worker_set(w, W_IN_FLIGHT, id, 0);
            PyObject *pools = FIELD(w, fold.w[W_POOLS]), *name, *pool;
            Py_ssize_t pos = 0;
            if (!rc && !PyDict_CheckExact(pools)) {
                PyErr_SetString(PyExc_TypeError, "fold_page: pools is not a dict");
                rc = -1;
            }
            while (!rc && PyDict_Next(pools, &pos, &name, &pool)) rc = waiting_discard(pool, id);
            break;
        }
        default:
            PyErr_SetString(PyExc_SystemError, "fold_page: a row with no compiled handler");
            rc = -1;
    }
#undef TS
    Py_XDECREF(ts);
    return rc;
}

/* RequestState.is_open: 1, 0 or -1. */
static int request_open(PyObject *st) {
    static const int held[] = {R_SLOTS, R_BLOCK_REFS, R_PINS, R_HANDLES};
    for (int j = 0; j < 4; j++) {
        int t = truthy(R(st, held[j]));
        if (t) return t;
    }
    if (R(st, R_PROMISE_NS) != Py_None) return 1;
    int req = truthy(R(st, R_TERM_REQUESTED));
    if (req < 0) return -1;
    if (req) {
        int done = truthy(R(st, R_TERM_DONE));
        if (done <= 0) return done < 0 ? -1 : 1;
    }
    PyObject *tr = R(st, R_TRANSFER);
    if (PyUnicode_Check(tr) && (PyUnicode_Compare(tr, fold.started) == 0 ||
                                PyUnicode_Compare(tr, fold.advertised) == 0 ||
                                PyUnicode_Compare(tr, fold.in_flight) == 0))
        return 1;
    int arrived = truthy(R(st, R_ARRIVED));
    if (arrived <= 0) return arrived;
    return R(st, R_FINISHED) == Py_None;
}

/* fold_page(stream, worker, n, offsets, buffers, names, slow) -> None
 * ``Projection._fold`` of one page of ``stream`` (the buffers as ``page_events`` takes them) into
 * ``worker`` (its WorkerState) and ``worker.requests``; ``slow(i)`` folds row i the definition's
 * way. The caller sets ``last_seq``. */
static PyObject *fold_page(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stream, *w, *offs, *bufs, *names, *slow;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!OnO!O!O!O", &PyUnicode_Type, &stream, &w, &n, &PyTuple_Type,
                          &offs, &PyTuple_Type, &bufs, &PyDict_Type, &names, &slow))
        return NULL;
    if (!fold.entry || fold.generation != kinds_generation) {
        PyErr_SetString(PyExc_RuntimeError, "_fastenc.fold_setup was not called for this kind table");
        return NULL;
    }
    if (!Py_IS_TYPE(w, fold.worker_type)) {
        PyErr_SetString(PyExc_TypeError, "fold_page: the worker is not a WorkerState");
        return NULL;
    }
    PyObject *reqs = PyObject_GetAttrString(w, "requests");
    if (!reqs) return NULL;
    if (!PyDict_CheckExact(reqs)) {
        Py_DECREF(reqs);
        PyErr_SetString(PyExc_TypeError, "fold_page: worker.requests is not a dict");
        return NULL;
    }
    Py_ssize_t off[5];
    view v[10];
    rid_cache cache = {NULL, -1, NULL};
    PyObject *result = NULL;
    if (page_open(offs, bufs, n, off, v, "fold_page") < 0) goto done;
    const int64_t *tss = (const int64_t *)v[1].b.buf + off[1];
    span sp[MAX_ATTRS];
    for (Py_ssize_t i = 0; i < n; i++) {
        page_row r;
        int rc = page_row_kind(v, off, i, &r);
        const fold_entry *e = rc ? NULL : &fold.entry[r.k - kinds];
        if (!rc && e->code != F_SLOW) {
            /* Checked as the definition checks it (or STOP: the definition's row); a row that
             * changes nothing needs its request id checked, not made. */
            rc = scan_attrs(r.k, r.as, r.al, sp);
            if (!rc) rc = page_row_rid(v, off, i, names, &cache, &r, e->code == F_NONE);
        }
        if (rc < 0) goto done;
        if (rc || e->code == F_SLOW) {
            PyObject *ok = PyObject_CallFunction(slow, "n", i);
            if (!ok) goto done;
            Py_DECREF(ok);
            if (!fold.entry || fold.generation != kinds_generation) {
                /* slow ran Python code that installed another kind table: the entries read
                 * for the next row would not be this table's */
                PyErr_SetString(PyExc_RuntimeError, "fold_page: the kind table changed during "
                                                    "the fold (fold_setup again)");
                goto done;
            }
            continue;
        }
        if (e->code == F_NONE) continue;
        /* Compiled handlers are request-scoped kinds only (fold_setup): r.rid is set. */
        PyObject *rid = r.rid;
        PyObject *val[2] = {NULL, NULL};
        int bad = 0;
        for (int j = 0; j < 2 && !bad; j++)
            if (e->at[j] >= 0)
                bad = !(val[j] = span_value(r.as, sp[e->at[j]], fold_reads[e->code][j].type));
        PyObject *st = bad ? NULL : PyDict_GetItemWithError(reqs, rid);
        if (st && !Py_IS_TYPE(st, fold.request_type)) {
            PyErr_SetString(PyExc_TypeError, "fold_page: a request that is not a RequestState");
            st = NULL;
        }
        if (st) {
            Py_INCREF(st);
        } else if (!bad && !PyErr_Occurred()) {
            PyObject *ts = PyLong_FromLongLong(tss[i]);
            st = ts ? new_request(stream, rid, ts) : NULL;
            Py_XDECREF(ts);
            if (st && PyDict_SetItem(reqs, rid, st) < 0) Py_CLEAR(st);
        }
        bad = !st;
        Py_INCREF(rid); /* the cache may move on while st is folded */
        PyObject *owners = bad ? NULL : R(st, R_OWNERS);
        for (int j = 0; j < e->nops && !bad; j++)
            bad = PySequence_SetItem(owners, e->op_index[j], e->op_owner[j]) < 0;
        if (!bad) bad = fold_handle(e->code, st, w, val, tss[i]) < 0;
        if (!bad) {
            int closing = R(st, R_FINISHED) != Py_None;
            if (!closing) {
                int arrived = truthy(R(st, R_ARRIVED));
                bad = arrived < 0;
                closing = !arrived;
            }
            if (!bad && closing) {
                int open = request_open(st);
                bad = open < 0 || (!open && PyDict_DelItem(reqs, rid) < 0);
            }
        }
        Py_DECREF(rid);
        Py_XDECREF(st);
        Py_XDECREF(val[0]);
        Py_XDECREF(val[1]);
        if (bad) goto done;
    }
    result = Py_NewRef(Py_None);
done:
    page_close(v);
    Py_XDECREF(cache.obj);
    Py_DECREF(reqs);
    return result;
}
