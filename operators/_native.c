/* operators._native: the user state's codec and settle (operators/state.py), the streaming CF's state codec and
   weight sorting (operators/cf.py), the ids' hashes (operators/state.py `item_hash`, `id_hash`) and parts of the user
   operator's per-event and per-list code (operators/user.py) in C, for the usual values.

   Each function handles the states the operator builds (exact ints in their fields' ranges, finite floats, ASCII
   strings within their lengths) and answers None for anything else; the caller then takes the Python path, which
   is the reference (operators/state.py: `encode`, `decode`, `settle` and their fast paths). So a value is never
   coerced here: what C returns is what the Python fast path returns on the same input, or None.
   The layout is the module docstring of operators/state.py (version 1, little-endian):

     header  `<BBqqIqqqfH4q`  84 bytes
     counts  `<HBHBHBB`       10 bytes
     seq     u32 item hash[n_seq], u32 age[n_seq], u8 code[n_seq]
     cats    u32 hash[n_cats], f16 weight[n_cats]
     dedup   u64 hash[n_dedup], u32 age[n_dedup]
     recs    u32 hash[n_recs]
     strings pending event id, user key, key id (UTF-8)

   Tested against the Python paths by tests/unit/operators/test_native.py. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if PY_BIG_ENDIAN
#error "operators._native reads and writes the little-endian layout in place: little-endian hosts only"
#endif

#define VERSION 1
#define HEADER_SIZE 84
#define COUNTS_SIZE 10
#define U32_MAX 4294967295LL
#define SAFE_TS 4611686018427387904LL /* 2**62: `_SAFE_TS` */
#define N_DET 4
#define F16_MAX 65504.0

enum { F_FIRST_TS, F_LAST_TS, F_N_EVENTS, F_ITEMS, F_TS, F_TYPES, F_RATINGS, F_CATS, F_DEDUP, F_FLAGGED_UNTIL,
       F_FLAG_LAST, F_LAST_EMIT_TS, F_PENDING_TS, F_PENDING_EVENT_ID, F_SURPRISE, F_SURPRISE_N, F_LAST_RECS,
       F_USER_KEY, F_KEY_ID, N_FIELDS };
/* UserState's fields, in declaration order */
static const char *FIELD_NAMES[N_FIELDS] = {
    "first_ts", "last_ts", "n_events", "items", "ts", "types", "ratings", "cats", "dedup", "flagged_until",
    "flag_last", "last_emit_ts", "pending_ts", "pending_event_id", "surprise", "surprise_n", "last_recs",
    "user_key", "key_id"};
static PyObject *FIELDS[N_FIELDS];
static PyObject *OBJECT_NEW; /* object.__new__ */
static PyObject *ROUND;      /* builtins.round */
static PyObject *RATING[32]; /* (code >> 3) / 2 as floats: `_RATING_OF_CODE` */

/* ------------------------------------------------------------------------------------------------ small helpers */

/* An exact int in int64 into *out; 0 if it is not one (a subclass, another type, out of range). */
static inline int exact_i64(PyObject *o, long long *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
    *out = v;
    return 1;
}

/* An exact int in 0..U32_MAX. */
static inline int exact_u32(PyObject *o, uint32_t *out) {
    long long v;
    if (!exact_i64(o, &v) || v < 0 || v > U32_MAX) return 0;
    *out = (uint32_t)v;
    return 1;
}

/* An exact int in 0..2**64-1. */
static inline int exact_u64(PyObject *o, uint64_t *out) {
    if (!PyLong_CheckExact(o)) return 0;
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    *out = v;
    return 1;
}

/* A non-negative exact int, clipped to `cap` (Python's `min(x, cap)` before packing). */
static inline int exact_count(PyObject *o, long long cap, long long *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) { *out = cap; return 1; }
    if (overflow < 0 || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
    if (v < 0) return 0;
    *out = v < cap ? v : cap;
    return 1;
}

static inline void put_u16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_i64(unsigned char *p, long long v) { int64_t x = v; memcpy(p, &x, 8); }
static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline long long get_i64(const unsigned char *p) { int64_t v; memcpy(&v, p, 8); return (long long)v; }
static inline uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The state's fields, borrowed from its instance dict; 0 if one is missing. `*dict_out` is a new reference. */
static int load_fields(PyObject *s, PyObject **dict_out, PyObject **f) {
    PyObject *d = PyObject_GenericGetDict(s, NULL);
    if (d == NULL) { PyErr_Clear(); return 0; }
    for (int i = 0; i < N_FIELDS; i++) {
        f[i] = PyDict_GetItemWithError(d, FIELDS[i]);
        if (f[i] == NULL) { PyErr_Clear(); Py_DECREF(d); return 0; }
    }
    *dict_out = d;
    return 1;
}

/* The header's values as `_HEADER.pack` takes them (counts clipped like the Python callers), checked. */
typedef struct {
    long long first_ts, last_ts, n_events, flagged_until, last_emit_ts, pending_ts, surprise_n;
    double surprise;  /* the f32 value, widened */
    float surprise32;
    long long flag_last[N_DET];
} Header;

static int read_header(PyObject **f, Header *h) {
    if (!exact_i64(f[F_LAST_TS], &h->last_ts) || h->last_ts < -SAFE_TS || h->last_ts > SAFE_TS) return 0;
    if (!exact_i64(f[F_FIRST_TS], &h->first_ts) || !exact_i64(f[F_FLAGGED_UNTIL], &h->flagged_until) ||
        !exact_i64(f[F_LAST_EMIT_TS], &h->last_emit_ts) || !exact_i64(f[F_PENDING_TS], &h->pending_ts))
        return 0;
    if (!exact_count(f[F_N_EVENTS], U32_MAX, &h->n_events) || !exact_count(f[F_SURPRISE_N], 65535, &h->surprise_n))
        return 0;
    PyObject *sp = f[F_SURPRISE];
    if (!PyFloat_CheckExact(sp)) return 0;
    double x = PyFloat_AS_DOUBLE(sp);
    float y = (float)x; /* what struct's 'f' packs (PyFloat_Pack4: the C cast) */
    if (!isfinite(x) || !isfinite(y)) return 0;
    h->surprise32 = y;
    h->surprise = (double)y;
    PyObject *fl = f[F_FLAG_LAST];
    if (!PyList_CheckExact(fl) || PyList_GET_SIZE(fl) != N_DET) return 0;
    for (int i = 0; i < N_DET; i++)
        if (!exact_i64(PyList_GET_ITEM(fl, i), &h->flag_last[i])) return 0;
    return 1;
}

static void write_header(unsigned char *p, const Header *h) {
    p[0] = VERSION;
    p[1] = 0;
    put_i64(p + 2, h->first_ts);
    put_i64(p + 10, h->last_ts);
    put_u32(p + 18, (uint32_t)h->n_events);
    put_i64(p + 22, h->flagged_until);
    put_i64(p + 30, h->last_emit_ts);
    put_i64(p + 38, h->pending_ts);
    memcpy(p + 46, &h->surprise32, 4);
    put_u16(p + 50, (uint16_t)h->surprise_n);
    for (int i = 0; i < N_DET; i++) put_i64(p + 52 + 8 * i, h->flag_last[i]);
}

/* An ASCII str of at most `cap` characters (its UTF-8 bytes are its characters). */
static int ascii_str(PyObject *o, Py_ssize_t cap, const char **data, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_ASCII(o)) return 0;
    *n = PyUnicode_GET_LENGTH(o);
    if (*n > cap) return 0;
    *data = (const char *)PyUnicode_1BYTE_DATA(o);
    return 1;
}

/* Categories heaviest first, ties in dict order (a stable sort, as Python's `sorted`), checked and sorted into
   `out`: at most 255 entries of exact u32 keys and exact finite floats within f16's range, else 0. */
typedef struct { PyObject *key; uint32_t h; double w; } Cat;

static int read_cats(PyObject *cats, Cat *out, Py_ssize_t *n_out) {
    if (!PyDict_CheckExact(cats)) return 0;
    Py_ssize_t n = PyDict_GET_SIZE(cats);
    if (n > 255) return 0;
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *v;
    while (PyDict_Next(cats, &pos, &k, &v)) {
        if (!PyFloat_CheckExact(v)) return 0;
        double w = PyFloat_AS_DOUBLE(v);
        if (!(fabs(w) <= F16_MAX)) return 0; /* NaN fails too */
        uint32_t h;
        if (!exact_u32(k, &h)) return 0;
        /* insertion: after every entry at least as heavy (stable, heaviest first) */
        Py_ssize_t j = i;
        while (j > 0 && out[j - 1].w < w) { out[j] = out[j - 1]; j--; }
        out[j].key = k; out[j].h = h; out[j].w = w;
        i++;
    }
    *n_out = i;
    return 1;
}

static inline double f16_round(double w) {
    unsigned char buf[2];
    if (PyFloat_Pack2(w, (char *)buf, 1) < 0) { PyErr_Clear(); return NAN; }
    return PyFloat_Unpack2((const char *)buf, 1);
}

/* --------------------------------------------------------------------------------------------------- encode */

PyDoc_STRVAR(encode_doc, "encode(state) -> bytes | None: `operators.state.encode`'s bytes for a usual state, else None.");

static PyObject *native_encode(PyObject *self, PyObject *s) {
    PyObject *d, *f[N_FIELDS];
    if (!load_fields(s, &d, f)) Py_RETURN_NONE;
    PyObject *result = NULL;
    Cat cats[255];
    Header h;
    Py_ssize_t n_cats = 0;
    const char *sp[3];
    Py_ssize_t sn[3];
    static const Py_ssize_t caps[3] = {65535, 255, 255};
    PyObject *items = f[F_ITEMS], *ts = f[F_TS], *types = f[F_TYPES], *ratings = f[F_RATINGS];
    PyObject *dedup = f[F_DEDUP], *recs = f[F_LAST_RECS];
    if (!read_header(f, &h)) goto defer;
    if (!PyList_CheckExact(items) || !PyList_CheckExact(ts) || !PyList_CheckExact(types) ||
        !PyList_CheckExact(ratings) || !PyList_CheckExact(dedup) || !PyList_CheckExact(recs))
        goto defer;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n > 65535 || PyList_GET_SIZE(ts) != n || PyList_GET_SIZE(types) != n || PyList_GET_SIZE(ratings) != n)
        goto defer;
    Py_ssize_t n_dedup = PyList_GET_SIZE(dedup), n_recs = PyList_GET_SIZE(recs);
    if (n_dedup > 65535 || n_recs > 255) goto defer;
    if (!read_cats(f[F_CATS], cats, &n_cats)) goto defer;
    PyObject *strs[3] = {f[F_PENDING_EVENT_ID], f[F_USER_KEY], f[F_KEY_ID]};
    for (int i = 0; i < 3; i++)
        if (!ascii_str(strs[i], caps[i], &sp[i], &sn[i])) goto defer;

    Py_ssize_t size = HEADER_SIZE + COUNTS_SIZE + 9 * n + 6 * n_cats + 12 * n_dedup + 4 * n_recs + sn[0] + sn[1] + sn[2];
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) goto error;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(result);
    write_header(p, &h);
    put_u16(p + 84, (uint16_t)n);
    p[86] = (unsigned char)n_cats;
    put_u16(p + 87, (uint16_t)n_dedup);
    p[89] = (unsigned char)n_recs;
    put_u16(p + 90, (uint16_t)sn[0]);
    p[92] = (unsigned char)sn[1];
    p[93] = (unsigned char)sn[2];
    unsigned char *q = p + HEADER_SIZE + COUNTS_SIZE;
    long long last = h.last_ts;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t item;
        long long t, type;
        PyObject *r = PyList_GET_ITEM(ratings, i);
        if (!exact_u32(PyList_GET_ITEM(items, i), &item) || !exact_i64(PyList_GET_ITEM(ts, i), &t) ||
            t < -SAFE_TS || t > SAFE_TS || !exact_i64(PyList_GET_ITEM(types, i), &type) || type < 0 || type > 255 ||
            !PyFloat_CheckExact(r))
            goto defer_result;
        double rv = PyFloat_AS_DOUBLE(r);
        if (!(fabs(rv) <= 1e300)) goto defer_result; /* the Python path's finite sum */
        double half = nearbyint(rv * 2.0);             /* round(): half to even, the default rounding mode */
        long long bits = half < 0 ? 0 : half > 15 ? 15 : (long long)half;
        long long age = last - t;
        age = age < 0 ? 0 : age > U32_MAX ? U32_MAX : age;
        put_u32(q + 4 * i, item);
        put_u32(q + 4 * n + 4 * i, (uint32_t)age);
        q[8 * n + i] = (unsigned char)(type | (bits << 3));
    }
    q += 9 * n;
    for (Py_ssize_t i = 0; i < n_cats; i++) {
        put_u32(q + 4 * i, cats[i].h);
        if (PyFloat_Pack2(cats[i].w, (char *)(q + 4 * n_cats + 2 * i), 1) < 0) { PyErr_Clear(); goto defer_result; }
    }
    q += 6 * n_cats;
    for (Py_ssize_t i = 0; i < n_dedup; i++) {
        PyObject *e = PyList_GET_ITEM(dedup, i);
        uint64_t eh;
        long long t;
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2 || !exact_u64(PyTuple_GET_ITEM(e, 0), &eh) ||
            !exact_i64(PyTuple_GET_ITEM(e, 1), &t) || t < -SAFE_TS || t > SAFE_TS)
            goto defer_result;
        long long age = last - t;
        age = age < 0 ? 0 : age > U32_MAX ? U32_MAX : age;
        put_u64(q + 8 * i, eh);
        put_u32(q + 8 * n_dedup + 4 * i, (uint32_t)age);
    }
    q += 12 * n_dedup;
    for (Py_ssize_t i = 0; i < n_recs; i++) {
        uint32_t r;
        if (!exact_u32(PyList_GET_ITEM(recs, i), &r)) goto defer_result;
        put_u32(q + 4 * i, r);
    }
    q += 4 * n_recs;
    for (int i = 0; i < 3; i++) { memcpy(q, sp[i], sn[i]); q += sn[i]; }
    Py_DECREF(d);
    return result;
defer_result:
    Py_DECREF(result);
defer:
    Py_DECREF(d);
    Py_RETURN_NONE;
error:
    Py_DECREF(d);
    return NULL;
}

/* --------------------------------------------------------------------------------------------------- decode */

PyDoc_STRVAR(decode_doc, "decode(cls, data) -> state | None: `operators.state.decode(data)` as a `cls` for usual bytes, "
             "else None (errors included: the Python path raises them).");

static PyObject *int_list_u32(const unsigned char *p, Py_ssize_t n) {
    PyObject *l = PyList_New(n);
    if (l == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(get_u32(p + 4 * i));
        if (v == NULL) { Py_DECREF(l); return NULL; }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static PyObject *native_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "decode(cls, data)"); return NULL; }
    PyObject *cls = args[0], *data = args[1];
    if (!PyBytes_CheckExact(data)) Py_RETURN_NONE;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len < HEADER_SIZE + COUNTS_SIZE || b[0] != VERSION) Py_RETURN_NONE;
    Py_ssize_t n = get_u16(b + 84), n_cats = b[86], n_dedup = get_u16(b + 87), n_recs = b[89];
    Py_ssize_t sn[3] = {get_u16(b + 90), b[92], b[93]};
    if (len != HEADER_SIZE + COUNTS_SIZE + 9 * n + 6 * n_cats + 12 * n_dedup + 4 * n_recs + sn[0] + sn[1] + sn[2])
        Py_RETURN_NONE;
    float s32;
    memcpy(&s32, b + 46, 4);
    long long last = get_i64(b + 10);
    if (!isfinite(s32) || last < -SAFE_TS || last > SAFE_TS) Py_RETURN_NONE;
    const unsigned char *seq = b + HEADER_SIZE + COUNTS_SIZE, *codes = seq + 8 * n, *cat = seq + 9 * n;
    const unsigned char *dd = cat + 6 * n_cats, *rc = dd + 12 * n_dedup, *str = rc + 4 * n_recs;
    for (Py_ssize_t i = 0; i < n; i++) {
        int t = codes[i] & 7;
        if (t < 1 || t > 5) Py_RETURN_NONE;
    }
    double cw[255];
    for (Py_ssize_t i = 0; i < n_cats; i++) {
        cw[i] = PyFloat_Unpack2((const char *)(cat + 4 * n_cats + 2 * i), 1);
        if (!isfinite(cw[i])) Py_RETURN_NONE;
    }

    PyObject *v[N_FIELDS] = {NULL};
    PyObject *obj = NULL, *d = NULL;
    /* the strings first: one that is not UTF-8 defers (the Python path raises its StateError) */
    static const int str_fields[3] = {F_PENDING_EVENT_ID, F_USER_KEY, F_KEY_ID};
    for (int i = 0, off = 0; i < 3; off += sn[i], i++) {
        v[str_fields[i]] = PyUnicode_DecodeUTF8((const char *)str + off, sn[i], "strict");
        if (v[str_fields[i]] == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) { PyErr_Clear(); goto defer; }
            goto error;
        }
    }
    v[F_FIRST_TS] = PyLong_FromLongLong(get_i64(b + 2));
    v[F_LAST_TS] = PyLong_FromLongLong(last);
    v[F_N_EVENTS] = PyLong_FromUnsignedLong(get_u32(b + 18));
    v[F_ITEMS] = int_list_u32(seq, n);
    v[F_TS] = PyList_New(n);
    v[F_TYPES] = PyList_New(n);
    v[F_RATINGS] = PyList_New(n);
    v[F_CATS] = PyDict_New();
    v[F_DEDUP] = PyList_New(n_dedup);
    v[F_FLAGGED_UNTIL] = PyLong_FromLongLong(get_i64(b + 22));
    v[F_FLAG_LAST] = PyList_New(N_DET);
    v[F_LAST_EMIT_TS] = PyLong_FromLongLong(get_i64(b + 30));
    v[F_PENDING_TS] = PyLong_FromLongLong(get_i64(b + 38));
    v[F_SURPRISE] = PyFloat_FromDouble((double)s32);
    v[F_SURPRISE_N] = PyLong_FromLong(get_u16(b + 50));
    v[F_LAST_RECS] = int_list_u32(rc, n_recs);
    for (int i = 0; i < N_FIELDS; i++)
        if (v[i] == NULL) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyLong_FromLongLong(last - (long long)get_u32(seq + 4 * n + 4 * i));
        if (t == NULL) goto error;
        PyList_SET_ITEM(v[F_TS], i, t);
        PyList_SET_ITEM(v[F_TYPES], i, PyLong_FromLong(codes[i] & 7)); /* small ints: cached, never NULL */
        PyObject *r = RATING[codes[i] >> 3];
        Py_INCREF(r);
        PyList_SET_ITEM(v[F_RATINGS], i, r);
    }
    for (Py_ssize_t i = 0; i < n_cats; i++) {
        PyObject *k = PyLong_FromUnsignedLong(get_u32(cat + 4 * i)), *w = PyFloat_FromDouble(cw[i]);
        int bad = k == NULL || w == NULL || PyDict_SetItem(v[F_CATS], k, w) < 0;
        Py_XDECREF(k);
        Py_XDECREF(w);
        if (bad) goto error;
    }
    for (Py_ssize_t i = 0; i < n_dedup; i++) {
        PyObject *hh = PyLong_FromUnsignedLongLong(get_u64(dd + 8 * i));
        PyObject *t = PyLong_FromLongLong(last - (long long)get_u32(dd + 8 * n_dedup + 4 * i));
        PyObject *e = (hh && t) ? PyTuple_Pack(2, hh, t) : NULL;
        Py_XDECREF(hh);
        Py_XDECREF(t);
        if (e == NULL) goto error;
        PyList_SET_ITEM(v[F_DEDUP], i, e);
    }
    for (int i = 0; i < N_DET; i++) {
        PyObject *t = PyLong_FromLongLong(get_i64(b + 52 + 8 * i));
        if (t == NULL) goto error;
        PyList_SET_ITEM(v[F_FLAG_LAST], i, t);
    }
    obj = PyObject_CallOneArg(OBJECT_NEW, cls);
    if (obj == NULL) goto error;
    d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL) goto error;
    for (int i = 0; i < N_FIELDS; i++)
        if (PyDict_SetItem(d, FIELDS[i], v[i]) < 0) goto error;
    Py_DECREF(d);
    for (int i = 0; i < N_FIELDS; i++) Py_DECREF(v[i]);
    return obj;
defer:
    for (int i = 0; i < N_FIELDS; i++) Py_XDECREF(v[i]);
    Py_RETURN_NONE;
error:
    Py_XDECREF(d);
    Py_XDECREF(obj);
    for (int i = 0; i < N_FIELDS; i++) Py_XDECREF(v[i]);
    return NULL;
}

/* --------------------------------------------------------------------------------------------------- settle */

PyDoc_STRVAR(settle_doc, "settle(state) -> True | None: `operators.state._settle_fast` for a usual state (True: brought "
             "in place to `decode(encode(state))`'s values), else None with the state untouched.");

static PyObject *native_settle(PyObject *self, PyObject *s) {
    PyObject *d, *f[N_FIELDS];
    if (!load_fields(s, &d, f)) Py_RETURN_NONE;
    Header h;
    Cat cats[255];
    Py_ssize_t n_cats = 0;
    PyObject *new_ts = NULL, *new_dedup = NULL, *new_cats = NULL, *new_flags = NULL;
    PyObject *hv[6] = {NULL};
    PyObject *items = f[F_ITEMS], *ts = f[F_TS], *types = f[F_TYPES], *ratings = f[F_RATINGS];
    PyObject *dedup = f[F_DEDUP], *recs = f[F_LAST_RECS];
    if (!read_header(f, &h)) goto defer;
    if (!PyList_CheckExact(items) || !PyList_CheckExact(ts) || !PyList_CheckExact(types) ||
        !PyList_CheckExact(ratings) || !PyList_CheckExact(dedup) || !PyList_CheckExact(recs))
        goto defer;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n > 65535 || PyList_GET_SIZE(ts) != n || PyList_GET_SIZE(types) != n || PyList_GET_SIZE(ratings) != n)
        goto defer;
    long long last = h.last_ts, lo = last - U32_MAX;
    long long t_lo = 0, t_hi = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long type, t;
        uint32_t item;
        PyObject *r = PyList_GET_ITEM(ratings, i);
        if (!exact_i64(PyList_GET_ITEM(types, i), &type) || type < 1 || type > 5 || !PyFloat_CheckExact(r) ||
            !exact_u32(PyList_GET_ITEM(items, i), &item) || !exact_i64(PyList_GET_ITEM(ts, i), &t))
            goto defer;
        double rv = PyFloat_AS_DOUBLE(r) * 2.0; /* a half step 0 .. 7.5 (-0.0 too, as the set's 0.0) */
        if (!(rv >= 0.0 && rv <= 15.0 && rv == floor(rv))) goto defer;
        if (i == 0 || t < t_lo) t_lo = t;
        if (i == 0 || t > t_hi) t_hi = t;
    }
    if (n && (t_lo < lo || t_hi > last)) {
        if (t_lo < -SAFE_TS || t_hi > SAFE_TS) goto defer;
        new_ts = PyList_New(n);
        if (new_ts == NULL) goto error;
        for (Py_ssize_t i = 0; i < n; i++) {
            long long t;
            exact_i64(PyList_GET_ITEM(ts, i), &t);
            t = t < lo ? lo : t > last ? last : t;
            PyObject *o = PyLong_FromLongLong(t);
            if (o == NULL) goto error;
            PyList_SET_ITEM(new_ts, i, o);
        }
    }
    Py_ssize_t n_dedup = PyList_GET_SIZE(dedup);
    if (n_dedup > 65535) goto defer;
    int clip_dedup = 0;
    for (Py_ssize_t i = 0; i < n_dedup; i++) {
        PyObject *e = PyList_GET_ITEM(dedup, i);
        uint64_t eh;
        long long t;
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2 || !exact_u64(PyTuple_GET_ITEM(e, 0), &eh) ||
            !exact_i64(PyTuple_GET_ITEM(e, 1), &t))
            goto defer;
        if (t < lo || t > last) {
            if (t < -SAFE_TS || t > SAFE_TS) goto defer;
            clip_dedup = 1;
        }
    }
    if (clip_dedup) {
        /* the Python path checks the extremes of all times before it clips: every time within +-2**62 here */
        for (Py_ssize_t i = 0; i < n_dedup; i++) {
            long long t;
            exact_i64(PyTuple_GET_ITEM(PyList_GET_ITEM(dedup, i), 1), &t);
            if (t < -SAFE_TS || t > SAFE_TS) goto defer;
        }
        new_dedup = PyList_New(n_dedup);
        if (new_dedup == NULL) goto error;
        for (Py_ssize_t i = 0; i < n_dedup; i++) {
            PyObject *e = PyList_GET_ITEM(dedup, i);
            long long t;
            exact_i64(PyTuple_GET_ITEM(e, 1), &t);
            t = t < lo ? lo : t > last ? last : t;
            PyObject *o = PyLong_FromLongLong(t);
            PyObject *c = o ? PyTuple_Pack(2, PyTuple_GET_ITEM(e, 0), o) : NULL;
            Py_XDECREF(o);
            if (c == NULL) goto error;
            PyList_SET_ITEM(new_dedup, i, c);
        }
    }
    Py_ssize_t n_recs = PyList_GET_SIZE(recs);
    if (n_recs > 255) goto defer;
    for (Py_ssize_t i = 0; i < n_recs; i++) {
        uint32_t r;
        if (!exact_u32(PyList_GET_ITEM(recs, i), &r)) goto defer;
    }
    static const Py_ssize_t caps[3] = {65535, 255, 255};
    PyObject *strs[3] = {f[F_PENDING_EVENT_ID], f[F_USER_KEY], f[F_KEY_ID]};
    for (int i = 0; i < 3; i++) {
        const char *p;
        Py_ssize_t sn;
        if (!ascii_str(strs[i], caps[i], &p, &sn)) goto defer;
    }
    if (!read_cats(f[F_CATS], cats, &n_cats)) goto defer;
    /* all checked: the decoded state's values */
    new_cats = PyDict_New();
    if (new_cats == NULL) goto error;
    for (Py_ssize_t i = 0; i < n_cats; i++) {
        PyObject *w = PyFloat_FromDouble(f16_round(cats[i].w));
        int bad = w == NULL || PyDict_SetItem(new_cats, cats[i].key, w) < 0;
        Py_XDECREF(w);
        if (bad) goto error;
    }
    new_flags = PyList_New(N_DET);
    if (new_flags == NULL) goto error;
    for (int i = 0; i < N_DET; i++) {
        PyObject *o = PyList_GET_ITEM(f[F_FLAG_LAST], i);
        Py_INCREF(o);
        PyList_SET_ITEM(new_flags, i, o);
    }
    /* the clipped counts and the f32 surprise (the other header fields are as they were) */
    hv[0] = PyLong_FromLongLong(h.n_events);
    hv[1] = PyLong_FromLongLong(h.surprise_n);
    hv[2] = PyFloat_FromDouble(h.surprise);
    if (hv[0] == NULL || hv[1] == NULL || hv[2] == NULL) goto error;
    if (PyDict_SetItem(d, FIELDS[F_N_EVENTS], hv[0]) < 0 || PyDict_SetItem(d, FIELDS[F_SURPRISE_N], hv[1]) < 0 ||
        PyDict_SetItem(d, FIELDS[F_SURPRISE], hv[2]) < 0 || PyDict_SetItem(d, FIELDS[F_FLAG_LAST], new_flags) < 0 ||
        PyDict_SetItem(d, FIELDS[F_CATS], new_cats) < 0 ||
        (new_ts && PyDict_SetItem(d, FIELDS[F_TS], new_ts) < 0) ||
        (new_dedup && PyDict_SetItem(d, FIELDS[F_DEDUP], new_dedup) < 0))
        goto error;
    for (int i = 0; i < 3; i++) Py_DECREF(hv[i]);
    Py_DECREF(new_flags);
    Py_DECREF(new_cats);
    Py_XDECREF(new_ts);
    Py_XDECREF(new_dedup);
    Py_DECREF(d);
    Py_RETURN_TRUE;
defer:
    Py_XDECREF(new_ts);
    Py_XDECREF(new_dedup);
    Py_DECREF(d);
    Py_RETURN_NONE;
error:
    for (int i = 0; i < 3; i++) Py_XDECREF(hv[i]);
    Py_XDECREF(new_flags);
    Py_XDECREF(new_cats);
    Py_XDECREF(new_ts);
    Py_XDECREF(new_dedup);
    Py_DECREF(d);
    return NULL;
}

/* ------------------------------------------------------------------- one event into a user state (operators/user.py) */

#define EXACT_DBL (1LL << 53) /* ints below this convert to double exactly (Python's int / int is then the C one) */

/* Stable sort of `n` categories heaviest first (Python's `sorted(..., key=lambda kv: -kv[1])`), cut to `top`, as a
   new dict; NULL with an exception on failure. Weights are exact non-NaN floats (checked by the caller). */
static PyObject *top_cats(PyObject *cats, Py_ssize_t top) {
    Py_ssize_t n = PyDict_GET_SIZE(cats), pos = 0, i = 0;
    Cat stack[64], *cs = n <= 64 ? stack : PyMem_Malloc(n * sizeof(Cat));
    if (cs == NULL) return PyErr_NoMemory();
    PyObject *k, *v;
    while (PyDict_Next(cats, &pos, &k, &v)) {
        double w = PyFloat_AS_DOUBLE(v);
        Py_ssize_t j = i;
        while (j > 0 && cs[j - 1].w < w) { cs[j] = cs[j - 1]; j--; }
        cs[j].key = k; cs[j].w = w; cs[j].h = 0;
        i++;
    }
    PyObject *out = PyDict_New();
    for (i = 0; out != NULL && i < n && i < top; i++) {
        PyObject *w = PyDict_GetItemWithError(cats, cs[i].key); /* the very float object */
        if (w == NULL || PyDict_SetItem(out, cs[i].key, w) < 0) Py_CLEAR(out);
    }
    if (cs != stack) PyMem_Free(cs);
    return out;
}

PyDoc_STRVAR(update_doc,
    "update(state, ts, item_hash, code, rating, id_hash, item_cats, event_weight, half_life_ms, history_len, "
    "dedup_window_ms, dedup_max_ids, top_categories) -> True | None: `UserOperator._update` for a usual state "
    "(`item_cats`: the item's category hashes, None for an item outside the model's vocabulary; `half_life_ms` "
    "already at least 1), else None with the state untouched.");

static PyObject *native_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 13) { PyErr_SetString(PyExc_TypeError, "update() takes 13 arguments"); return NULL; }
    PyObject *s = args[0], *ih = args[2], *code = args[3], *rating = args[4], *hid = args[5], *icats = args[6];
    PyObject *ew = args[7];
    long long ts, hl, hist, dwin, dmax, top, first, last, n_events, t;
    if (!exact_i64(args[1], &ts) || !exact_i64(args[8], &hl) || !exact_i64(args[9], &hist) ||
        !exact_i64(args[10], &dwin) || !exact_i64(args[11], &dmax) || !exact_i64(args[12], &top) ||
        !PyFloat_CheckExact(rating) || !PyFloat_CheckExact(ew) || !PyLong_CheckExact(ih) || !PyLong_CheckExact(code))
        Py_RETURN_NONE;
    if (hl < 1 || hl >= EXACT_DBL || hist < 1 || dmax < 0 || top < 0 || (icats != Py_None && !PyList_CheckExact(icats)
        && !PyTuple_CheckExact(icats)))
        Py_RETURN_NONE;
    PyObject *d, *f[N_FIELDS];
    if (!load_fields(s, &d, f)) Py_RETURN_NONE;
    PyObject *cats = f[F_CATS], *items = f[F_ITEMS], *tsl = f[F_TS], *types = f[F_TYPES], *ratings = f[F_RATINGS];
    PyObject *dedup = f[F_DEDUP];
    PyObject *new_cats = NULL, *new_dedup = NULL, *o = NULL;
    if (!exact_i64(f[F_FIRST_TS], &first) || !exact_i64(f[F_LAST_TS], &last) ||
        !exact_i64(f[F_N_EVENTS], &n_events) || n_events >= (1LL << 62) || !PyDict_CheckExact(cats) ||
        !PyList_CheckExact(items) || !PyList_CheckExact(tsl) || !PyList_CheckExact(types) ||
        !PyList_CheckExact(ratings) || !PyList_CheckExact(dedup))
        goto defer;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (PyList_GET_SIZE(tsl) != n || PyList_GET_SIZE(types) != n || PyList_GET_SIZE(ratings) != n) goto defer;
    long long new_last = last > ts ? last : ts, gap_last, gap_ts, lo;
    if (__builtin_sub_overflow(new_last, last, &gap_last) || __builtin_sub_overflow(new_last, ts, &gap_ts) ||
        __builtin_sub_overflow(new_last, dwin, &lo) || gap_last >= EXACT_DBL || gap_ts >= EXACT_DBL)
        goto defer;
    {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(cats, &pos, &k, &v))
            if (!PyFloat_CheckExact(v) || isnan(PyFloat_AS_DOUBLE(v))) goto defer;
    }
    /* where the event goes: after every entry at or before its time (Python's scan from the end) */
    Py_ssize_t at = n;
    while (at > 0) {
        if (!exact_i64(PyList_GET_ITEM(tsl, at - 1), &t)) goto defer;
        if (t <= ts) break;
        at--;
    }
    Py_ssize_t n_dedup = PyList_GET_SIZE(dedup);
    for (Py_ssize_t i = 0; i < n_dedup; i++) {
        PyObject *e = PyList_GET_ITEM(dedup, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 2 || !exact_i64(PyTuple_GET_ITEM(e, 1), &t)) goto defer;
    }
    if (icats != Py_None) {
        Py_ssize_t nc = PySequence_Fast_GET_SIZE(icats);
        for (Py_ssize_t i = 0; i < nc; i++)
            if (!PyLong_CheckExact(PySequence_Fast_GET_ITEM(icats, i))) goto defer;
    }

    /* checked: the event's changes, as `_update` makes them */
    PyObject *cur = cats; /* borrowed; new_cats owns a replacement */
    if (PyDict_GET_SIZE(cats) && new_last > last) {
        double fct = pow(0.5, (double)gap_last / (double)hl);
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        new_cats = PyDict_New();
        if (new_cats == NULL) goto error;
        while (PyDict_Next(cats, &pos, &k, &v)) {
            PyObject *x = PyFloat_FromDouble(PyFloat_AS_DOUBLE(v) * fct);
            int bad = x == NULL || PyDict_SetItem(new_cats, k, x) < 0;
            Py_XDECREF(x);
            if (bad) goto error;
        }
        cur = new_cats;
    }
    if (icats != Py_None) {
        double w = PyFloat_AS_DOUBLE(ew) * pow(0.5, (double)gap_ts / (double)hl);
        Py_ssize_t nc = PySequence_Fast_GET_SIZE(icats);
        for (Py_ssize_t i = 0; i < nc; i++) {
            PyObject *ch = PySequence_Fast_GET_ITEM(icats, i);
            PyObject *old = PyDict_GetItemWithError(cur, ch);
            if (old == NULL && PyErr_Occurred()) goto error;
            /* `s.cats.get(ch, 0.0) + w`: every weight in `cur` is an exact float (checked, or made here) */
            PyObject *x = PyFloat_FromDouble((old ? PyFloat_AS_DOUBLE(old) : 0.0) + w);
            int bad = x == NULL || PyDict_SetItem(cur, ch, x) < 0;
            Py_XDECREF(x);
            if (bad) goto error;
        }
        if (PyDict_GET_SIZE(cur) > top) {
            PyObject *cut = top_cats(cur, top);
            if (cut == NULL) goto error;
            Py_XDECREF(new_cats);
            new_cats = cut;
        }
    }
    if (new_cats && PyDict_SetItem(d, FIELDS[F_CATS], new_cats) < 0) goto error;
    if (first == 0 && PyDict_SetItem(d, FIELDS[F_FIRST_TS], args[1]) < 0) goto error;
    if ((o = PyLong_FromLongLong(new_last)) == NULL || PyDict_SetItem(d, FIELDS[F_LAST_TS], o) < 0) goto error;
    Py_CLEAR(o);
    if ((o = PyLong_FromLongLong(n_events + 1)) == NULL || PyDict_SetItem(d, FIELDS[F_N_EVENTS], o) < 0) goto error;
    Py_CLEAR(o);
    if (PyList_Insert(items, at, ih) < 0 || PyList_Insert(tsl, at, args[1]) < 0 || PyList_Insert(types, at, code) < 0
        || PyList_Insert(ratings, at, rating) < 0)
        goto error;
    if (n + 1 > hist) {
        Py_ssize_t cut = n + 1 - hist;
        if (PyList_SetSlice(items, 0, cut, NULL) < 0 || PyList_SetSlice(tsl, 0, cut, NULL) < 0 ||
            PyList_SetSlice(types, 0, cut, NULL) < 0 || PyList_SetSlice(ratings, 0, cut, NULL) < 0)
            goto error;
    }
    if ((o = PyTuple_Pack(2, hid, args[1])) == NULL || PyList_Append(dedup, o) < 0) goto error;
    Py_CLEAR(o);
    /* `[d for d in s.dedup if d[1] >= lo][-dedup_max_ids:]` (0 keeps them all, as Python's [-0:] does) */
    n_dedup = PyList_GET_SIZE(dedup);
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < n_dedup; i++) {
        exact_i64(PyTuple_GET_ITEM(PyList_GET_ITEM(dedup, i), 1), &t);
        kept += t >= lo;
    }
    Py_ssize_t skip = dmax > 0 && kept > dmax ? kept - dmax : 0;
    Py_ssize_t size = kept - skip;
    new_dedup = PyList_New(size);
    if (new_dedup == NULL) goto error;
    for (Py_ssize_t i = 0, j = 0; i < n_dedup; i++) {
        PyObject *e = PyList_GET_ITEM(dedup, i);
        exact_i64(PyTuple_GET_ITEM(e, 1), &t);
        if (!(t >= lo)) continue; /* the counting loop's test */
        if (skip) { skip--; continue; }
        if (j >= size) break;      /* never past the list (the two loops agree) */
        Py_INCREF(e);
        PyList_SET_ITEM(new_dedup, j++, e);
    }
    if (PyDict_SetItem(d, FIELDS[F_DEDUP], new_dedup) < 0) goto error;
    Py_DECREF(new_dedup);
    Py_XDECREF(new_cats);
    Py_DECREF(d);
    Py_RETURN_TRUE;
defer:
    Py_DECREF(d);
    Py_RETURN_NONE;
error:
    Py_XDECREF(o);
    Py_XDECREF(new_cats);
    Py_XDECREF(new_dedup);
    Py_DECREF(d);
    return NULL;
}

/* ------------------------------------------------------------------------------ fraud features (operators/fraud.py) */

static int cmp_double(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

PyDoc_STRVAR(gap_stats_doc,
    "gap_stats(ts, k) -> (median, cv) | None: of the last k gaps between the times `ts` (ints): their median exactly "
    "as `fraud.regularity` computes it, and their coefficient of variation (std / max(mean, 1e-9)) summed in plain "
    "order, which can differ from numpy's in the last bits; None for fewer than k + 1 times or k < 1.");

static PyObject *native_gap_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0])) Py_RETURN_NONE;
    long long k;
    if (!exact_i64(args[1], &k) || k < 1 || k > 256) Py_RETURN_NONE; /* on the stack: small (a JVM thread's, too) */
    PyObject *ts = args[0];
    Py_ssize_t n = PyList_GET_SIZE(ts);
    if (n < k + 1) Py_RETURN_NONE;
    double g[256], srt[256], prev = 0.0;
    for (Py_ssize_t i = 0; i <= k; i++) {
        long long t;
        if (!exact_i64(PyList_GET_ITEM(ts, n - k - 1 + i), &t)) Py_RETURN_NONE;
        double x = (double)t; /* float(t): round to nearest, as the C conversion */
        if (i) g[i - 1] = x - prev;
        prev = x;
    }
    memcpy(srt, g, k * sizeof(double));
    qsort(srt, k, sizeof(double), cmp_double);
    double med = k % 2 ? srt[k / 2] : (srt[k / 2 - 1] + srt[k / 2]) / 2;
    double sum = 0.0, sq = 0.0;
    for (long long i = 0; i < k; i++) sum += g[i];
    double mean = sum / (double)k;
    for (long long i = 0; i < k; i++) sq += (g[i] - mean) * (g[i] - mean);
    double cv = sqrt(sq / (double)k) / (mean > 1e-9 ? mean : 1e-9);
    return Py_BuildValue("(dd)", med, cv);
}

PyDoc_STRVAR(prev_items_doc, "prev_items(items, ts, event_ts, item, window, max_gap_ms) -> list | None: "
             "`operators.cf.prev_items` for exact ints, else None.");

static PyObject *native_prev_items(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1])) Py_RETURN_NONE;
    PyObject *items = args[0], *ts = args[1];
    long long now, item, window, gap;
    if (!exact_i64(args[2], &now) || !exact_i64(args[3], &item) || !exact_i64(args[4], &window) ||
        !exact_i64(args[5], &gap) || window > 64)
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (PyList_GET_SIZE(ts) != n) Py_RETURN_NONE;
    long long got[64];
    PyObject *objs[64];
    Py_ssize_t m = 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        long long h, t, age;
        if (!exact_i64(PyList_GET_ITEM(items, i), &h) || !exact_i64(PyList_GET_ITEM(ts, i), &t) ||
            __builtin_sub_overflow(now, t, &age))
            Py_RETURN_NONE;
        if (m >= window || age > gap) break;
        if (t > now || h == item) continue;
        int seen = 0;
        for (Py_ssize_t j = 0; j < m && !seen; j++) seen = got[j] == h;
        if (!seen) { got[m] = h; objs[m] = PyList_GET_ITEM(items, i); m++; }
    }
    PyObject *out = PyList_New(m);
    if (out == NULL) return NULL;
    for (Py_ssize_t j = 0; j < m; j++) {
        Py_INCREF(objs[j]);
        PyList_SET_ITEM(out, j, objs[j]);
    }
    return out;
}

/* ------------------------------------------------------------------------------------- streaming CF (operators/cf.py) */

typedef struct { PyObject *key, *w; long long h; double v; } Pair;

static int heavier(const void *pa, const void *pb) {
    const Pair *a = pa, *b = pb;
    if (a->v > b->v) return -1;
    if (a->v < b->v) return 1;
    return (a->h > b->h) - (a->h < b->h);
}

PyDoc_STRVAR(heaviest_first_doc, "heaviest_first(weights) -> list | None: `operators.cf.heaviest_first(weights)` "
             "for exact int keys (int64) and non-NaN float weights, else None.");

static PyObject *native_heaviest_first(PyObject *self, PyObject *weights) {
    if (!PyDict_CheckExact(weights)) Py_RETURN_NONE;
    Py_ssize_t n = PyDict_GET_SIZE(weights), pos = 0, i = 0;
    Pair stack[64], *pairs = n <= 64 ? stack : PyMem_Malloc(n * sizeof(Pair));
    if (pairs == NULL) return PyErr_NoMemory();
    PyObject *k, *v, *out = NULL;
    while (PyDict_Next(weights, &pos, &k, &v)) {
        if (!PyFloat_CheckExact(v) || isnan(PyFloat_AS_DOUBLE(v)) || !exact_i64(k, &pairs[i].h)) goto defer;
        pairs[i].key = k; pairs[i].w = v; pairs[i].v = PyFloat_AS_DOUBLE(v);
        i++;
    }
    /* (weight descending, key ascending): a total order (keys are distinct), so any sort gives Python's list */
    qsort(pairs, n, sizeof(Pair), heavier);
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (i = 0; i < n; i++) {
        PyObject *t = PyTuple_Pack(2, pairs[i].key, pairs[i].w);
        if (t == NULL) { Py_CLEAR(out); goto done; }
        PyList_SET_ITEM(out, i, t);
    }
    goto done;
defer:
    out = Py_None;
    Py_INCREF(out);
done:
    if (pairs != stack) PyMem_Free(pairs);
    return out;
}

PyDoc_STRVAR(cf_apply_doc,
    "cf_apply(cf_succ, cf_new, cf_in, j, preds, cap, n_items): the successor bookkeeping of "
    "`UserOperator.apply_cf` for item index `j` and its published predecessors `preds` ((hash, weight) pairs), with "
    "Python's own comparisons and dict operations.");

/* `d.get(key)` as a borrowed dict, or NULL (no error) when absent; -1 on error */
static int get_dict(PyObject *d, PyObject *key, PyObject **out) {
    *out = PyDict_GetItemWithError(d, key);
    if (*out == NULL) return PyErr_Occurred() ? -1 : 0;
    return 0;
}

/* `d.pop(key, None)` for a dict `d`: 0, or -1 on error */
static int pop_quiet(PyObject *d, PyObject *key) {
    if (!PyDict_Check(d)) { PyErr_SetString(PyExc_TypeError, "CF successors must be dicts"); return -1; }
    int has = PyDict_Contains(d, key);
    return has <= 0 ? has : PyDict_DelItem(d, key);
}

static PyObject *native_cf_apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyDict_Check(args[0]) || !PyDict_Check(args[1]) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "cf_apply(cf_succ: dict, cf_new: dict, cf_in: dict, j, preds, cap, n_items)");
        return NULL;
    }
    PyObject *succ_all = args[0], *new_all = args[1], *cf_in = args[2], *j = args[3], *preds = args[4];
    Py_ssize_t cap = PyLong_AsSsize_t(args[5]);
    if (cap == -1 && PyErr_Occurred()) return NULL;
    int is_new = PyObject_RichCompareBool(j, args[6], Py_GE); /* j >= n_items */
    if (is_new < 0) return NULL;
    PyObject *seq = PySequence_Fast(preds, "preds must be a sequence");
    if (seq == NULL) return NULL;
    PyObject *old_in = NULL, *hs = NULL, *x, *y, *out = NULL;
    /* `for h in self.cf_in.pop(j, []): self.cf_succ.get(h, {}).pop(j, None); self.cf_new.get(h, {}).pop(j, None)` */
    old_in = PyDict_GetItemWithError(cf_in, j);
    if (old_in == NULL && PyErr_Occurred()) goto done;
    if (old_in != NULL) {
        Py_INCREF(old_in);
        if (PyDict_DelItem(cf_in, j) < 0) goto done;
        PyObject *it = PyObject_GetIter(old_in), *h;
        if (it == NULL) goto done;
        while ((h = PyIter_Next(it)) != NULL) {
            int bad = get_dict(succ_all, h, &x) < 0 || get_dict(new_all, h, &y) < 0;
            if (!bad && x != NULL) { Py_INCREF(x); bad = pop_quiet(x, j) < 0; Py_DECREF(x); }
            if (!bad && y != NULL) { Py_INCREF(y); bad = pop_quiet(y, j) < 0; Py_DECREF(y); }
            Py_DECREF(h);
            if (bad) { Py_DECREF(it); goto done; }
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    hs = PyList_New(n);
    if (hs == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i), *h, *w;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a predecessor must be a (hash, weight) pair");
            goto done;
        }
        h = PyTuple_GET_ITEM(pair, 0);
        w = PyTuple_GET_ITEM(pair, 1);
        Py_INCREF(h);
        PyList_SET_ITEM(hs, i, h);
        /* succ = self.cf_succ.setdefault(h, {}); succ[j] = w */
        PyObject *fresh = PyDict_New();
        if (fresh == NULL) goto done;
        PyObject *succ = PyDict_SetDefault(succ_all, h, fresh); /* borrowed */
        Py_DECREF(fresh);
        if (succ != NULL && !PyDict_Check(succ)) PyErr_SetString(PyExc_TypeError, "CF successors must be dicts");
        if (succ == NULL || !PyDict_Check(succ) || PyDict_SetItem(succ, j, w) < 0) goto done;
        if (PyDict_GET_SIZE(succ) > cap) {
            /* the lightest goes: m = min(succ.values()); of equal weights, the highest key */
            Py_ssize_t pos = 0;
            PyObject *k, *v, *m = NULL, *gone = NULL;
            while (PyDict_Next(succ, &pos, &k, &v)) {
                int lt = m == NULL ? 1
                         : PyFloat_CheckExact(v) && PyFloat_CheckExact(m)  /* float < float: the doubles' < */
                             ? PyFloat_AS_DOUBLE(v) < PyFloat_AS_DOUBLE(m)
                             : PyObject_RichCompareBool(v, m, Py_LT);
                if (lt < 0) goto done;
                if (lt) m = v;
            }
            Py_XINCREF(m);
            pos = 0;
            while (PyDict_Next(succ, &pos, &k, &v)) {
                int is_eq;
                if (PyFloat_CheckExact(v) && PyFloat_CheckExact(m)) {
                    is_eq = PyFloat_AS_DOUBLE(v) == PyFloat_AS_DOUBLE(m);
                } else {
                    PyObject *eq = PyObject_RichCompare(v, m, Py_EQ); /* `v == m`, no identity shortcut */
                    is_eq = eq == NULL ? -1 : PyObject_IsTrue(eq);
                    Py_XDECREF(eq);
                }
                if (is_eq < 0) { Py_XDECREF(m); goto done; }
                if (!is_eq) continue;
                long long ki, gi;
                int gt = gone == NULL ? 1
                         : exact_i64(k, &ki) && exact_i64(gone, &gi) ? ki > gi
                                                                      : PyObject_RichCompareBool(k, gone, Py_GT);
                if (gt < 0) { Py_XDECREF(m); goto done; }
                if (gt) gone = k;
            }
            Py_XDECREF(m);
            if (gone == NULL) {
                PyErr_SetString(PyExc_ValueError, "max() arg is an empty sequence");
                goto done;
            }
            Py_INCREF(gone);
            int bad = PyDict_DelItem(succ, gone) < 0 || get_dict(new_all, h, &y) < 0;
            if (!bad && y != NULL) { Py_INCREF(y); bad = pop_quiet(y, gone) < 0; Py_DECREF(y); }
            Py_DECREF(gone);
            if (bad) goto done;
        }
        if (is_new) {
            int has = PyDict_Contains(succ, j);
            if (has < 0) goto done;
            if (has) {
                fresh = PyDict_New();
                if (fresh == NULL) goto done;
                PyObject *nw = PyDict_SetDefault(new_all, h, fresh);
                Py_DECREF(fresh);
                if (nw != NULL && !PyDict_Check(nw)) PyErr_SetString(PyExc_TypeError, "CF successors must be dicts");
                if (nw == NULL || !PyDict_Check(nw) || PyDict_SetItem(nw, j, w) < 0) goto done;
            }
        }
    }
    if (PyDict_SetItem(cf_in, j, hs) < 0) goto done;
    out = Py_None;
    Py_INCREF(out);
done:
    Py_XDECREF(old_in);
    Py_XDECREF(hs);
    Py_DECREF(seq);
    return out;
}

#define CF_HEAD 19 /* `<BqqH`: version, last_ts, published_ts, n */
#define CF_PRED 8  /* `<If`: item hash, weight */

/* A CF state's predecessor count, or -1 where the bytes are not one of this version (decode_cf raises then) */
static Py_ssize_t cf_count(const unsigned char *b, Py_ssize_t len) {
    if (len < CF_HEAD || b[0] != 1) return -1;
    Py_ssize_t n = get_u16(b + 17);
    return len == CF_HEAD + CF_PRED * n ? n : -1;
}

/* The header of a CF state: version, last_ts, published (negative: a publication owed), count */
static void put_cf_head(unsigned char *p, long long last, long long pub, Py_ssize_t n) {
    p[0] = 1;
    put_i64(p + 1, last);
    put_i64(p + 9, pub);
    put_u16(p + 17, (uint16_t)n);
}

PyDoc_STRVAR(encode_cf_doc, "encode_cf(last_ts, published, preds) -> bytes | None: `operators.cf.encode_cf`'s bytes "
             "for exact u32 keys and finite float weights within f32, else None.");

typedef struct { uint32_t h; float w; } CfPred;

static int by_hash(const void *pa, const void *pb) {
    const CfPred *a = pa, *b = pb;
    return (a->h > b->h) - (a->h < b->h);
}

static PyObject *native_encode_cf(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "encode_cf(last_ts, published, preds)"); return NULL; }
    long long last, pub;
    PyObject *preds = args[2];
    if (!exact_i64(args[0], &last) || !exact_i64(args[1], &pub) || !PyDict_CheckExact(preds)) Py_RETURN_NONE;
    Py_ssize_t n = PyDict_GET_SIZE(preds), pos = 0, i = 0;
    if (n > 65535) Py_RETURN_NONE;
    CfPred stack[64], *ps = n <= 64 ? stack : PyMem_Malloc(n * sizeof(CfPred));
    if (ps == NULL) return PyErr_NoMemory();
    PyObject *k, *v, *out = NULL;
    while (PyDict_Next(preds, &pos, &k, &v)) {
        if (!PyFloat_CheckExact(v) || !exact_u32(k, &ps[i].h)) goto defer;
        double x = PyFloat_AS_DOUBLE(v);
        ps[i].w = (float)x; /* struct's 'f' (PyFloat_Pack4: the C cast; it raises where the cast overflows) */
        if (!isfinite(x) || !isfinite(ps[i].w)) goto defer;
        i++;
    }
    qsort(ps, n, sizeof(CfPred), by_hash); /* sorted(items()): by hash (keys are distinct) */
    out = PyBytes_FromStringAndSize(NULL, CF_HEAD + CF_PRED * n);
    if (out == NULL) goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    put_cf_head(p, last, pub, n);
    for (i = 0; i < n; i++) {
        put_u32(p + CF_HEAD + CF_PRED * i, ps[i].h);
        memcpy(p + CF_HEAD + CF_PRED * i + 4, &ps[i].w, 4);
    }
    goto done;
defer:
    out = Py_None;
    Py_INCREF(out);
done:
    if (ps != stack) PyMem_Free(ps);
    return out;
}

PyDoc_STRVAR(decode_cf_doc, "decode_cf(data) -> (last_ts, published, preds) | None: what `operators.cf.decode_cf` "
             "reads from well-formed bytes, else None.");

static PyObject *native_decode_cf(PyObject *self, PyObject *data) {
    if (!PyBytes_CheckExact(data)) Py_RETURN_NONE;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    Py_ssize_t n = cf_count(b, len);
    if (n < 0) Py_RETURN_NONE;
    PyObject *preds = PyDict_New();
    if (preds == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *q = b + CF_HEAD + CF_PRED * i;
        float w;
        memcpy(&w, q + 4, 4);
        PyObject *k = PyLong_FromUnsignedLong(get_u32(q)), *v = PyFloat_FromDouble((double)w);
        int bad = k == NULL || v == NULL || PyDict_SetItem(preds, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) { Py_DECREF(preds); return NULL; }
    }
    PyObject *out = Py_BuildValue("(LLN)", get_i64(b + 1), get_i64(b + 9), preds);
    return out;
}

/* ------------------------------------------------------------------------------- one CF step (operators/cf.py) */

typedef struct { uint32_t h; double w; int fresh; } CfW;

static int cf_heavier(const void *pa, const void *pb) { /* heaviest_first: weight descending, hash ascending */
    const CfW *a = pa, *b = pb;
    if (a->w > b->w) return -1;
    if (a->w < b->w) return 1;
    return (a->h > b->h) - (a->h < b->h);
}

static int cf_by_hash(const void *pa, const void *pb) {
    const CfW *a = pa, *b = pb;
    return (a->h > b->h) - (a->h < b->h);
}

#define EXACT_53 9007199254740992LL /* 2**53: ints below it convert to double exactly */

PyDoc_STRVAR(cf_step_doc,
    "cf_step(state, ts, prev, own, window, cap, half_life, interval) -> (bytes, best | None, last_ts) | None: "
    "`CfOperator.step` after its checks, for the usual values: the state's new bytes, the heaviest-first "
    "predecessors to publish (None: no publication) and the event time they are decayed to; None for anything "
    "else (the Python code then decides).");

static PyObject *native_cf_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long ts, own, window, cap, hl, interval, last = 0, pub = 0;
    if (nargs != 8 || !PyList_CheckExact(args[2]) || !exact_i64(args[1], &ts) || !exact_i64(args[3], &own)
        || !exact_i64(args[4], &window) || !exact_i64(args[5], &cap) || !exact_i64(args[6], &hl)
        || !exact_i64(args[7], &interval) || window < 0 || cap < 0 || hl < 1 || hl >= EXACT_53
        || ts <= -SAFE_TS || ts >= SAFE_TS)
        Py_RETURN_NONE;
    PyObject *state = args[0], *prev = args[2];
    Py_ssize_t n = 0, np_ = PyList_GET_SIZE(prev);
    if (window < np_) np_ = (Py_ssize_t)window;
    const unsigned char *b = NULL;
    int dirty = 0;
    if (state != Py_None) {
        if (!PyBytes_CheckExact(state)) Py_RETURN_NONE;
        b = (const unsigned char *)PyBytes_AS_STRING(state);
        n = cf_count(b, PyBytes_GET_SIZE(state));
        if (n < 0) {
            b = NULL; /* decode_cf raises CfStateError: the step starts afresh */
            n = 0;
        } else {
            last = get_i64(b + 1);
            long long p = get_i64(b + 9);
            if (p < 0) { dirty = 1; pub = -1 - p; } else pub = p;
            if (last <= -SAFE_TS || last >= SAFE_TS || pub >= SAFE_TS) Py_RETURN_NONE;
        }
    }
    CfW stack[128], *e = (n + np_) <= 128 ? stack : PyMem_Malloc((size_t)(n + np_) * sizeof(CfW));
    if (e == NULL) return PyErr_NoMemory();
    PyObject *out = NULL, *best = NULL, *bytes = NULL;
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char *q = b + CF_HEAD + CF_PRED * i;
        float w;
        memcpy(&w, q + 4, 4);
        e[i].h = get_u32(q);
        e[i].w = (double)w;
        e[i].fresh = 0;
        /* distinct hashes in order (what encode writes) and finite weights; else Python's dict decides */
        if (!isfinite(e[i].w) || (i > 0 && e[i].h <= e[i - 1].h)) goto defer;
    }
    m = n;
    if (ts > last) {
        if (last) {
            long long d = ts - last;
            if (d >= EXACT_53) goto defer;
            double f = pow(0.5, (double)d / (double)hl);
            for (Py_ssize_t i = 0; i < m; i++) e[i].w = e[i].w * f;
        }
        last = ts;
    }
    if (last - ts >= EXACT_53) goto defer;
    double late = pow(0.5, (double)(last - ts) / (double)hl);
    for (Py_ssize_t k = 0; k < np_; k++) {
        PyObject *h = PyList_GET_ITEM(prev, k);
        if (!PyLong_CheckExact(h)) {
            if (PyLong_Check(h)) goto defer; /* a bool or an int subclass */
            continue;                        /* not an int: skipped */
        }
        long long hv;
        if (!exact_i64(h, &hv) || hv < 0 || hv > U32_MAX) goto defer;
        if (hv == own) continue;
        Py_ssize_t at = -1;
        for (Py_ssize_t i = 0; i < m; i++) if (e[i].h == (uint32_t)hv) { at = i; break; }
        double add = late / (double)(k + 1);
        if (at < 0) {
            e[m].h = (uint32_t)hv; e[m].w = 0.0 + add; e[m].fresh = 1;
            m++;
        } else {
            e[at].w = e[at].w + add;
        }
    }
    for (Py_ssize_t i = 0; i < m; i++) if (isnan(e[i].w)) goto defer;
    int sorted_heavy = 0;
    if (m > cap) { /* the lightest go: heaviest_first, then the first cap */
        qsort(e, (size_t)m, sizeof(CfW), cf_heavier);
        sorted_heavy = 1;
        m = (Py_ssize_t)cap;
    }
    Py_ssize_t kept_old = 0;
    int changed = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (e[i].fresh) changed = 1;
        else kept_old++;
    }
    if (kept_old < n) changed = 1;
    dirty = dirty || changed;
    if (dirty && (pub == 0 || last - pub >= interval)) {
        if (!sorted_heavy) qsort(e, (size_t)m, sizeof(CfW), cf_heavier);
        best = PyList_New(m);
        if (best == NULL) goto fail;
        for (Py_ssize_t i = 0; i < m; i++) {
            PyObject *t = Py_BuildValue("(kd)", (unsigned long)e[i].h, e[i].w);
            if (t == NULL) goto fail;
            PyList_SET_ITEM(best, i, t);
        }
        pub = last;
        dirty = 0;
    }
    if (m > 65535) goto defer;
    qsort(e, (size_t)m, sizeof(CfW), cf_by_hash);
    bytes = PyBytes_FromStringAndSize(NULL, CF_HEAD + CF_PRED * m);
    if (bytes == NULL) goto fail;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(bytes);
    put_cf_head(p, last, dirty ? -1 - pub : pub, m);
    for (Py_ssize_t i = 0; i < m; i++) {
        float w = (float)e[i].w; /* struct's 'f': raises where the cast overflows (then Python raises too) */
        if (!isfinite(w)) goto defer;
        put_u32(p + CF_HEAD + CF_PRED * i, e[i].h);
        memcpy(p + CF_HEAD + CF_PRED * i + 4, &w, 4);
    }
    out = Py_BuildValue("(NOL)", bytes, best ? best : Py_None, last);
    bytes = NULL;
    Py_XDECREF(best);
    best = NULL;
    goto done;
defer:
    out = Py_None;
    Py_INCREF(out);
    goto done;
fail:
    out = NULL;
done:
    Py_XDECREF(best);
    Py_XDECREF(bytes);
    if (e != stack) PyMem_Free(e);
    return out;
}

/* ------------------------------------------------------------------------------- ids' hashes (BLAKE2b, RFC 7693) */

static const uint64_t B2B_IV[8] = {0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
                                   0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
                                   0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};
static const uint8_t B2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4}, {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13}, {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11}, {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5}, {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define ROTR64(x, y) (((x) >> (y)) ^ ((x) << (64 - (y))))
#define B2B_G(a, b, c, d, x, y)                                                                                      \
    do {                                                                                                             \
        v[a] = v[a] + v[b] + (x); v[d] = ROTR64(v[d] ^ v[a], 32); v[c] = v[c] + v[d]; v[b] = ROTR64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y); v[d] = ROTR64(v[d] ^ v[a], 16); v[c] = v[c] + v[d]; v[b] = ROTR64(v[b] ^ v[c], 63); \
    } while (0)

/* F, the compression function, on one 128-byte block; t the bytes hashed so far (< 2**64 here), last: final block */
static void b2b_compress(uint64_t h[8], const unsigned char *block, uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = B2B_IV[i]; }
    v[12] ^= t;
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) memcpy(&m[i], block + 8 * i, 8); /* little-endian host (checked above) */
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2B_SIGMA[r];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The first 8 bytes of BLAKE2b (no key, digest size `outlen`) of data, as a little-endian integer */
static uint64_t b2b_head(const unsigned char *data, Py_ssize_t len, int outlen) {
    uint64_t h[8];
    unsigned char block[128];
    memcpy(h, B2B_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    Py_ssize_t done = 0;
    while (len - done > 128) {
        b2b_compress(h, data + done, (uint64_t)(done + 128), 0);
        done += 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data + done, (size_t)(len - done));
    b2b_compress(h, block, (uint64_t)len, 1);
    return h[0];
}

PyDoc_STRVAR(id_hash_doc, "id_hash(text, size) -> int | None: `int.from_bytes(hashlib.blake2b(text.encode(), "
             "digest_size=size).digest(), 'little')` for an ASCII str and size 4 or 8, else None.");

static PyObject *native_id_hash(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyUnicode_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) Py_RETURN_NONE;
    PyObject *text = args[0];
    long size = PyLong_AsLong(args[1]);
    if ((size != 4 && size != 8) || !PyUnicode_IS_ASCII(text)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint64_t h = b2b_head((const unsigned char *)PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), (int)size);
    return PyLong_FromUnsignedLongLong(size == 4 ? (h & 0xFFFFFFFFULL) : h);
}

/* ------------------------------------------------------------------------------------- the per-list phase */

PyDoc_STRVAR(cf_scores_doc,
    "cf_scores(items, pool, cf_succ, weight, decay, recent, index_hash) -> dict | None: `UserOperator._cf_scores`'s "
    "scores before its sort (item index -> score, the user's items left out) for the usual inputs (exact ints, "
    "exact floats), else None.");

static PyObject *native_cf_scores(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) || !PyDict_CheckExact(args[2])
        || !PyList_CheckExact(args[6]))
        Py_RETURN_NONE;
    PyObject *items = args[0], *pool = args[1], *all = args[2], *index_hash = args[6];
    double weight, decay;
    if (PyFloat_CheckExact(args[3])) weight = PyFloat_AS_DOUBLE(args[3]);
    else Py_RETURN_NONE;
    if (PyFloat_CheckExact(args[4])) decay = PyFloat_AS_DOUBLE(args[4]);
    else Py_RETURN_NONE;
    long long want;
    if (!exact_i64(args[5], &want)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *recent_stack[64], **recent = recent_stack;
    long long recent_v[64];
    Py_ssize_t nr = 0;
    /* the user's distinct items, newest first, up to `recent` (the check after the append, as in Python) */
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        PyObject *h = PyList_GET_ITEM(items, i);
        long long hv;
        if (!exact_i64(h, &hv)) Py_RETURN_NONE;
        int seen = 0;
        for (Py_ssize_t k = 0; k < nr; k++) if (recent_v[k] == hv) { seen = 1; break; }
        if (!seen) {
            if (nr == 64) Py_RETURN_NONE;
            recent[nr] = h;
            recent_v[nr++] = hv;
        }
        if (nr >= want) break;
    }
    PyObject *add = PyDict_New(), *out = NULL, *seen_set = NULL;
    if (add == NULL) return NULL;
    for (Py_ssize_t age = 0; age < nr; age++) {
        PyObject *succ = PyDict_GetItemWithError(pool, recent[age]);
        if (succ == NULL) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        if (!PyDict_CheckExact(succ)) goto defer;
        if (PyDict_GET_SIZE(succ) == 0) continue;
        PyObject *mine = PyDict_GetItemWithError(all, recent[age]), *k, *x;
        if (mine == NULL) {
            if (PyErr_Occurred()) goto fail;
            goto defer; /* Python raises KeyError */
        }
        if (!PyDict_CheckExact(mine) || PyDict_GET_SIZE(mine) == 0) goto defer;
        Py_ssize_t pos = 0;
        double top = 0.0;
        int first = 1;
        while (PyDict_Next(mine, &pos, &k, &x)) { /* max(values): a later value replaces only if greater */
            if (!PyFloat_CheckExact(x)) goto defer;
            double xv = PyFloat_AS_DOUBLE(x);
            if (first || xv > top) top = xv;
            first = 0;
        }
        if (top == 0.0) top = 1.0; /* `or 1.0` (0.0 and -0.0 are false) */
        double p = pow(decay, (double)age);
        if (isinf(p) && isfinite(decay)) goto defer; /* Python raises OverflowError */
        double w = weight * p / top;
        pos = 0;
        while (PyDict_Next(succ, &pos, &k, &x)) {
            if (!PyFloat_CheckExact(x) || !PyLong_CheckExact(k)) goto defer;
            PyObject *old = PyDict_GetItemWithError(add, k);
            if (old == NULL && PyErr_Occurred()) goto fail;
            double base = old == NULL ? 0.0 : PyFloat_AS_DOUBLE(old);
            PyObject *val = PyFloat_FromDouble(base + w * PyFloat_AS_DOUBLE(x));
            if (val == NULL) goto fail;
            int rc = PyDict_SetItem(add, k, val);
            Py_DECREF(val);
            if (rc < 0) goto fail;
        }
    }
    if (PyDict_GET_SIZE(add) == 0) return add;
    seen_set = PySet_New(items);
    out = PyDict_New();
    if (seen_set == NULL || out == NULL) goto fail;
    Py_ssize_t pos = 0, len = PyList_GET_SIZE(index_hash);
    PyObject *j, *x;
    while (PyDict_Next(add, &pos, &j, &x)) {
        long long jv;
        if (!exact_i64(j, &jv) || jv < 0 || jv >= len) goto defer;
        int in = PySet_Contains(seen_set, PyList_GET_ITEM(index_hash, jv));
        if (in < 0) goto fail;
        if (!in && PyDict_SetItem(out, j, x) < 0) goto fail;
    }
    Py_DECREF(add);
    Py_DECREF(seen_set);
    return out;
defer:
    Py_DECREF(add);
    Py_XDECREF(seen_set);
    Py_XDECREF(out);
    Py_RETURN_NONE;
fail:
    Py_DECREF(add);
    Py_XDECREF(seen_set);
    Py_XDECREF(out);
    return NULL;
}

/* round(x, 6) as Python computes it (the double nearest to x's exact value rounded half-even to 6 decimals), in
   *out; 0 where this cannot tell cheaply (not finite, |x| * 1e6 >= 2**52), for Python's own round. x * 1e6 = y + e
   exactly (fma), and 1e6 is exact: y's rounding to an integer is x's unless y is a tie (.5), which e decides
   (e = 0: a true tie, half-even). r / 1e6 is then the double nearest to r * 10**-6, as Python's strtod gives. */
static int round6(double x, double *out) {
    if (!isfinite(x)) return 0;
    double y = x * 1e6;
    if (!(fabs(y) < 4503599627370496.0)) return 0;
    double e = fma(x, 1e6, -y), r = nearbyint(y), f = y - floor(y);
    if (f == 0.5 && e != 0.0) r = e > 0.0 ? floor(y) + 1.0 : floor(y);
    *out = r / 1e6;
    if (*out == 0.0) *out = copysign(0.0, x); /* Python keeps the sign of a value rounded to zero */
    return 1;
}

PyDoc_STRVAR(list_fields_doc,
    "list_fields(chosen, cand, rel, src, item_ids, index_hash) -> (ids, hashes, scores, sources) | None: a "
    "list record's per-item fields as `UserOperator._list_fields` builds them, for chosen indices within item_ids "
    "and index_hash and exact float relevances; else None.");

static PyObject *native_list_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) || !PyList_CheckExact(args[2])
        || !PyDict_CheckExact(args[3]) || !PyList_CheckExact(args[4]) || !PyList_CheckExact(args[5]))
        Py_RETURN_NONE;
    PyObject *chosen = args[0], *cand = args[1], *rel = args[2], *src = args[3], *ids_all = args[4];
    PyObject *hash_all = args[5];
    Py_ssize_t m = PyList_GET_SIZE(chosen), nc = PyList_GET_SIZE(cand);
    if (PyList_GET_SIZE(rel) != nc) Py_RETURN_NONE; /* zip(strict=True) raises */
    static PyObject *six = NULL;
    if (six == NULL && (six = PyLong_FromLong(6)) == NULL) return NULL;
    PyObject *ids = PyList_New(m), *hashes = PyList_New(m), *scores = PyList_New(m), *sources = PyList_New(m);
    if (ids == NULL || hashes == NULL || scores == NULL || sources == NULL) goto fail;
    for (Py_ssize_t t = 0; t < m; t++) {
        PyObject *i = PyList_GET_ITEM(chosen, t);
        long long iv;
        if (!exact_i64(i, &iv) || iv < 0 || iv >= PyList_GET_SIZE(ids_all) || iv >= PyList_GET_SIZE(hash_all))
            goto defer;
        PyObject *id = PyList_GET_ITEM(ids_all, iv), *h = PyList_GET_ITEM(hash_all, iv);
        Py_INCREF(id);
        PyList_SET_ITEM(ids, t, id);
        Py_INCREF(h);
        PyList_SET_ITEM(hashes, t, h);
        PyObject *r = NULL; /* dict(zip(cand, rel))[i]: the last candidate equal to i */
        for (Py_ssize_t c = nc - 1; c >= 0; c--) {
            long long cv;
            if (!exact_i64(PyList_GET_ITEM(cand, c), &cv)) goto defer;
            if (cv == iv) { r = PyList_GET_ITEM(rel, c); break; }
        }
        if (r == NULL || !PyFloat_CheckExact(r)) goto defer;
        double rv;
        PyObject *rounded;
        if (round6(PyFloat_AS_DOUBLE(r), &rv)) {
            rounded = PyFloat_FromDouble(rv);
        } else {
            PyObject *call[2] = {r, six};
            rounded = PyObject_Vectorcall(ROUND, call, 2, NULL);
        }
        if (rounded == NULL) goto fail;
        PyList_SET_ITEM(scores, t, rounded);
        PyObject *s = PyDict_GetItemWithError(src, i);
        if (s == NULL) {
            if (PyErr_Occurred()) goto fail;
            goto defer;
        }
        Py_INCREF(s);
        PyList_SET_ITEM(sources, t, s);
    }
    return Py_BuildValue("(NNNN)", ids, hashes, scores, sources);
defer:
    Py_XDECREF(ids);
    Py_XDECREF(hashes);
    Py_XDECREF(scores);
    Py_XDECREF(sources);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(ids);
    Py_XDECREF(hashes);
    Py_XDECREF(scores);
    Py_XDECREF(sources);
    return NULL;
}

/* --------------------------------------------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)native_encode, METH_O, encode_doc},
    {"decode", (PyCFunction)(void (*)(void))native_decode, METH_FASTCALL, decode_doc},
    {"settle", (PyCFunction)native_settle, METH_O, settle_doc},
    {"update", (PyCFunction)(void (*)(void))native_update, METH_FASTCALL, update_doc},
    {"gap_stats", (PyCFunction)(void (*)(void))native_gap_stats, METH_FASTCALL, gap_stats_doc},
    {"prev_items", (PyCFunction)(void (*)(void))native_prev_items, METH_FASTCALL, prev_items_doc},
    {"heaviest_first", (PyCFunction)native_heaviest_first, METH_O, heaviest_first_doc},
    {"cf_apply", (PyCFunction)(void (*)(void))native_cf_apply, METH_FASTCALL, cf_apply_doc},
    {"encode_cf", (PyCFunction)(void (*)(void))native_encode_cf, METH_FASTCALL, encode_cf_doc},
    {"decode_cf", (PyCFunction)native_decode_cf, METH_O, decode_cf_doc},
    {"id_hash", (PyCFunction)(void (*)(void))native_id_hash, METH_FASTCALL, id_hash_doc},
    {"cf_step", (PyCFunction)(void (*)(void))native_cf_step, METH_FASTCALL, cf_step_doc},
    {"cf_scores", (PyCFunction)(void (*)(void))native_cf_scores, METH_FASTCALL, cf_scores_doc},
    {"list_fields", (PyCFunction)(void (*)(void))native_list_fields, METH_FASTCALL, list_fields_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "operators._native",
                                    "The user state's codec and settle in C (operators/state.py is the reference).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    for (int i = 0; i < N_FIELDS; i++) {
        FIELDS[i] = PyUnicode_InternFromString(FIELD_NAMES[i]);
        if (FIELDS[i] == NULL) return NULL;
    }
    for (int i = 0; i < 32; i++) {
        RATING[i] = PyFloat_FromDouble(i / 2.0);
        if (RATING[i] == NULL) return NULL;
    }
    OBJECT_NEW = PyObject_GetAttrString((PyObject *)&PyBaseObject_Type, "__new__");
    if (OBJECT_NEW == NULL) return NULL;
    ROUND = PyDict_GetItemString(PyEval_GetBuiltins(), "round");
    if (ROUND == NULL) return NULL;
    Py_INCREF(ROUND);
    return PyModule_Create(&module);
}
