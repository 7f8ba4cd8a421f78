"""A CPython entry point for short host kernels: the argument checks and the calls in native code.

A DeepBench GEMV (64x1x1216) runs in ~3 us of machine code; the checked Python path around
it (type, shape, stride and dtype checks, reading three data addresses, allocating the
output, a lock, a ctypes call) added another ~2 us, where numpy's whole ``A @ x`` takes 4.
This module builds, once per process, one native function that does that work for any
kernel from a small descriptor, and wraps it as a Python builtin (``PyCFunction``, the
kind of object a C extension defines), so a call costs what calling ``len`` costs plus
one ``np.empty`` per output.

Only kernels whose every step runs on the calling thread get an entry (``NativeKernel``
decides; the threaded ones are long enough that Python's share does not matter): the
entry holds the GIL throughout, which also serialises its calls, so it owns one buffer
table and scratch for the kernel, separate from the Python path's.  Anything the entry
does not accept exactly (another type, shape, stride -- except on extent-1 axes, whose
stride no address uses -- or dtype object, keyword arguments) goes to the Python path
unchanged, and so do its errors.

What it relies on: the object header (``ob_refcnt``, ``ob_type``) and numpy's
``PyArrayObject`` field order (data, nd, dimensions, strides, base, descr), checked on
probe arrays before the first entry is made (``_layout_ok``); where the check fails no
entry is made and calls take the Python path.  The CPython functions it calls are passed
in by address (ctypes.pythonapi), not linked by name.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

# descriptor: i64 words.  Header, then 5 words per input, 2 per output, 3 per step.
#   0 nin  1 nout  2 nsteps  3 buffer table  4 fallback (PyObject*)  5 ndarray type
#   6 PyObject_Call  7 PyTuple_New  8 PyTuple_SetItem  9 Py_DecRef  10 PyTuple_Size
#   11 PyTuple_GetItem  12 PyDict_Size
#   input i at 16 + 5i: nd, dims (i64*), strides (i64*), descr (PyObject*), -
#   output j after the inputs: alloc callable, its argument tuple
#   step s after the outputs: kind (0: fn(arg), 1: fn(arg, 0)), fn, arg
HEADER = 16
ENTRY_MAX_SECONDS = 2e-4  # longer kernels keep the Python path, which releases the GIL while they run

_IR = r"""
define internal ptr @word(ptr %d, i64 %i) alwaysinline {
  %p = getelementptr i64, ptr %d, i64 %i
  %v = load ptr, ptr %p
  ret ptr %v
}

define internal i64 @int(ptr %d, i64 %i) alwaysinline {
  %p = getelementptr i64, ptr %d, i64 %i
  %v = load i64, ptr %p
  ret i64 %v
}

define internal ptr @field(ptr %o, i64 %off) alwaysinline {
  %p = getelementptr i8, ptr %o, i64 %off
  %v = load ptr, ptr %p
  ret ptr %v
}

; METH_VARARGS | METH_KEYWORDS: (self = capsule of the descriptor, args tuple, kwargs or null)
define ptr @isamap_entry(ptr %self, ptr %args, ptr %kw) {
entry:
  %sp = alloca [16 x i64]
  %cap = load ptr, ptr @capsule_get
  %d = call ptr %cap(ptr %self, ptr null)
  %nin = call i64 @int(ptr %d, i64 0)
  %nout = call i64 @int(ptr %d, i64 1)
  %nsteps = call i64 @int(ptr %d, i64 2)
  %table = call ptr @word(ptr %d, i64 3)
  %kwnull = icmp eq ptr %kw, null
  br i1 %kwnull, label %count, label %kwsize
kwsize:   ; f(*args, **kwargs) passes an empty dict
  %dsize_f = call ptr @word(ptr %d, i64 12)
  %nkw = call i64 %dsize_f(ptr %kw)
  %nokw = icmp eq i64 %nkw, 0
  br i1 %nokw, label %count, label %fallback
count:
  %size_f = call ptr @word(ptr %d, i64 10)
  %n = call i64 %size_f(ptr %args)
  %okn = icmp eq i64 %n, %nin
  %fewout = icmp ule i64 %nout, 16
  %ok0 = and i1 %okn, %fewout
  br i1 %ok0, label %inputs, label %fallback

inputs:
  %i = phi i64 [ 0, %count ], [ %i1, %input_ok ]
  %more = icmp slt i64 %i, %nin
  br i1 %more, label %input, label %alloc
input:
  %get_f = call ptr @word(ptr %d, i64 11)
  %x = call ptr %get_f(ptr %args, i64 %i)
  %rec0 = mul i64 %i, 5
  %rec = add i64 %rec0, 16
  %ty = call ptr @field(ptr %x, i64 8)
  %nd_ty = call ptr @word(ptr %d, i64 5)
  %isarr = icmp eq ptr %ty, %nd_ty
  br i1 %isarr, label %shape, label %fallback
shape:
  %ndp = getelementptr i8, ptr %x, i64 24
  %nd32 = load i32, ptr %ndp
  %nd = sext i32 %nd32 to i64
  %want_nd = call i64 @int(ptr %d, i64 %rec)
  %oknd = icmp eq i64 %nd, %want_nd
  %descr = call ptr @field(ptr %x, i64 56)
  %r3 = add i64 %rec, 3
  %want_descr = call ptr @word(ptr %d, i64 %r3)
  %okdescr = icmp eq ptr %descr, %want_descr
  %ok1 = and i1 %oknd, %okdescr
  br i1 %ok1, label %dims, label %fallback
dims:
  %dims_p = call ptr @field(ptr %x, i64 32)
  %strides_p = call ptr @field(ptr %x, i64 40)
  %r1 = add i64 %rec, 1
  %want_dims = call ptr @word(ptr %d, i64 %r1)
  %r2 = add i64 %rec, 2
  %want_strides = call ptr @word(ptr %d, i64 %r2)
  br label %dim
dim:
  %j = phi i64 [ 0, %dims ], [ %j1, %dim_ok ]
  %dmore = icmp slt i64 %j, %nd
  br i1 %dmore, label %dim_check, label %input_ok
dim_check:
  %a = call i64 @int(ptr %dims_p, i64 %j)
  %b = call i64 @int(ptr %want_dims, i64 %j)
  %s = call i64 @int(ptr %strides_p, i64 %j)
  %t = call i64 @int(ptr %want_strides, i64 %j)
  %oka = icmp eq i64 %a, %b
  %same = icmp eq i64 %s, %t
  %unit = icmp eq i64 %a, 1   ; an extent-1 axis: its stride is never used (a row of a wider array)
  %oks = or i1 %same, %unit
  %okd = and i1 %oka, %oks
  %j1 = add i64 %j, 1
  br i1 %okd, label %dim_ok, label %fallback
dim_ok:
  br label %dim
input_ok:
  %i1 = add i64 %i, 1
  br label %inputs

alloc:
  %in_words = mul i64 %nin, 5
  %out0 = add i64 %in_words, 16
  br label %outs
outs:
  %o = phi i64 [ 0, %alloc ], [ %o1, %out_ok ]
  %omore = icmp slt i64 %o, %nout
  br i1 %omore, label %out, label %buffers
out:
  %ow = mul i64 %o, 2
  %orec = add i64 %out0, %ow
  %fn = call ptr @word(ptr %d, i64 %orec)
  %orec1 = add i64 %orec, 1
  %targs = call ptr @word(ptr %d, i64 %orec1)
  %call_f = call ptr @word(ptr %d, i64 6)
  %arr = call ptr %call_f(ptr %fn, ptr %targs, ptr null)
  %failed = icmp eq ptr %arr, null
  br i1 %failed, label %unwind, label %out_ok
out_ok:
  %slot = getelementptr i64, ptr %sp, i64 %o
  store ptr %arr, ptr %slot
  %o1 = add i64 %o, 1
  br label %outs
unwind:   ; an allocation raised: drop the outputs made so far, return null (the error is set)
  %u = phi i64 [ %o, %out ], [ %nout, %tuple ], [ %u1, %drop ]
  %umore = icmp sgt i64 %u, 0
  br i1 %umore, label %drop, label %error
drop:
  %u1 = sub i64 %u, 1
  %uslot = getelementptr i64, ptr %sp, i64 %u1
  %uo = load ptr, ptr %uslot
  %dec_f = call ptr @word(ptr %d, i64 9)
  call void %dec_f(ptr %uo)
  br label %unwind
error:
  ret ptr null

buffers:  ; every address read after the allocations (which can run Python code)
  %bi = phi i64 [ 0, %outs ], [ %bi1, %buf ]
  %bmore = icmp slt i64 %bi, %nin
  br i1 %bmore, label %buf, label %obuffers
buf:
  %get_f2 = call ptr @word(ptr %d, i64 11)
  %bx = call ptr %get_f2(ptr %args, i64 %bi)
  %bdata = call ptr @field(ptr %bx, i64 16)
  %bslot = getelementptr i64, ptr %table, i64 %bi
  store ptr %bdata, ptr %bslot
  %bi1 = add i64 %bi, 1
  br label %buffers
obuffers:
  %oi = phi i64 [ 0, %buffers ], [ %oi1, %obuf ]
  %oimore = icmp slt i64 %oi, %nout
  br i1 %oimore, label %obuf, label %steps0
obuf:
  %oslot = getelementptr i64, ptr %sp, i64 %oi
  %oarr = load ptr, ptr %oslot
  %odata = call ptr @field(ptr %oarr, i64 16)
  %otab = add i64 %nin, %oi
  %otslot = getelementptr i64, ptr %table, i64 %otab
  store ptr %odata, ptr %otslot
  %oi1 = add i64 %oi, 1
  br label %obuffers

steps0:
  %ow2 = mul i64 %nout, 2
  %st0 = add i64 %out0, %ow2
  br label %steps
steps:
  %s_i = phi i64 [ 0, %steps0 ], [ %s_i1, %stepped ]
  %smore = icmp slt i64 %s_i, %nsteps
  br i1 %smore, label %step, label %result
step:
  %sw = mul i64 %s_i, 3
  %srec = add i64 %st0, %sw
  %kind = call i64 @int(ptr %d, i64 %srec)
  %srec1 = add i64 %srec, 1
  %sfn = call ptr @word(ptr %d, i64 %srec1)
  %srec2 = add i64 %srec, 2
  %sarg = call ptr @word(ptr %d, i64 %srec2)
  %is_task = icmp eq i64 %kind, 1
  br i1 %is_task, label %task, label %plain
task:
  call void %sfn(ptr %sarg, i64 0)
  br label %stepped
plain:
  call void %sfn(ptr %sarg)
  br label %stepped
stepped:
  %s_i1 = add i64 %s_i, 1
  br label %steps

result:
  %one = icmp eq i64 %nout, 1
  br i1 %one, label %single, label %tuple
single:
  %r = load ptr, ptr %sp
  ret ptr %r
tuple:
  %new_f = call ptr @word(ptr %d, i64 7)
  %tup = call ptr %new_f(i64 %nout)
  %tupnull = icmp eq ptr %tup, null
  br i1 %tupnull, label %unwind, label %fill
fill:
  %f = phi i64 [ 0, %tuple ], [ %f1, %filled ]
  %fmore = icmp slt i64 %f, %nout
  br i1 %fmore, label %put, label %done
put:
  %fslot = getelementptr i64, ptr %sp, i64 %f
  %fo = load ptr, ptr %fslot
  %set_f = call ptr @word(ptr %d, i64 8)
  %rc = call i32 %set_f(ptr %tup, i64 %f, ptr %fo)   ; steals the reference
  br label %filled
filled:
  %f1 = add i64 %f, 1
  br label %fill
done:
  ret ptr %tup

fallback:
  %fb = call ptr @word(ptr %d, i64 4)
  %call_fb = call ptr @word(ptr %d, i64 6)
  %res = call ptr %call_fb(ptr %fb, ptr %args, ptr %kw)
  ret ptr %res
}

@capsule_get = global ptr null
"""

METH_VARARGS, METH_KEYWORDS = 0x1, 0x2


class _MethodDef(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("meth", ctypes.c_void_p), ("flags", ctypes.c_int),
                ("doc", ctypes.c_char_p)]


def _layout_ok() -> bool:
    """Whether ndarrays are laid out as the entry reads them on this interpreter and numpy:
    type at 8, data at 16, nd (int) at 24, dimensions at 32, strides at 40, descr at 56."""
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_ssize_t) != 8:
        return False
    rd = ctypes.c_void_p.from_address
    try:
        for x in (np.zeros((3, 5), np.float32), np.ones(7, np.float64)[::2], np.zeros((2, 3, 4), np.int32).T):
            a = id(x)
            if rd(a + 8).value != id(type(x)) or rd(a + 16).value != x.ctypes.data:
                return False
            if ctypes.c_int.from_address(a + 24).value != x.ndim:
                return False
            dims, strides = rd(a + 32).value, rd(a + 40).value
            for j in range(x.ndim):
                if ctypes.c_int64.from_address(dims + 8 * j).value != x.shape[j]:
                    return False
                if ctypes.c_int64.from_address(strides + 8 * j).value != x.strides[j]:
                    return False
            if rd(a + 56).value != id(x.dtype):
                return False
        return True
    except (ValueError, OSError):
        return False


class _Entry:
    """The process's compiled entry function and the CPython functions it calls."""

    def __init__(self):
        from .loader import module_code
        self.code = module_code(_IR, "entry")
        api = ctypes.pythonapi
        addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        P, O = ctypes.c_void_p, ctypes.py_object
        # private prototypes (setting argtypes on ctypes.pythonapi's would change them for everyone)
        self.capsule_new = ctypes.PYFUNCTYPE(O, P, ctypes.c_char_p, P)(addr(api.PyCapsule_New))
        self.function_new = ctypes.PYFUNCTYPE(O, P, O, O)(addr(api.PyCFunction_NewEx))
        ctypes.c_void_p.from_address(self.code.address("capsule_get")).value = \
            addr(api.PyCapsule_GetPointer)
        self.api = [addr(api.PyObject_Call), addr(api.PyTuple_New), addr(api.PyTuple_SetItem), addr(api.Py_DecRef),
                    addr(api.PyTuple_Size), addr(api.PyTuple_GetItem), addr(api.PyDict_Size)]
        self.fn = self.code.address("isamap_entry")


_ENTRY: _Entry | None = None
_ENTRY_LOCK = threading.Lock()
_LAYOUT: bool | None = None


def _entry() -> _Entry | None:
    global _ENTRY, _LAYOUT
    with _ENTRY_LOCK:
        if _LAYOUT is None:
            _LAYOUT = _layout_ok()
        if _LAYOUT and _ENTRY is None:
            _ENTRY = _Entry()
        return _ENTRY


class Entry:
    """A Python callable running one kernel's steps from native code; ``fallback(*args,
    **kwargs)`` serves every call it does not accept.  Holds everything the descriptor
    points at."""

    def __init__(self, name: str, inputs, outputs, steps, table, fallback):
        """``inputs``: (shape, dtype) per input (C-contiguous); ``outputs``: (alloc, shape,
        dtype) per output; ``steps``: (kind, fn address, arg address); ``table``: the
        ctypes buffer table the steps' records point at."""
        e = _entry()
        if e is None:
            raise OSError("no native entry on this interpreter")
        self._keep = [table, fallback]
        words = [len(inputs), len(outputs), len(steps), ctypes.addressof(table), id(fallback), id(np.ndarray)]
        words += e.api + [0] * (HEADER - 6 - len(e.api))
        for shape, dt in inputs:
            dt = np.dtype(dt)
            dims = (ctypes.c_int64 * max(1, len(shape)))(*shape)
            strides = (ctypes.c_int64 * max(1, len(shape)))(*np.empty(shape, dt).strides)
            self._keep += [dims, strides, dt]
            words += [len(shape), ctypes.addressof(dims), ctypes.addressof(strides), id(dt), 0]
        for alloc, shape, dt in outputs:
            targs = (tuple(shape), np.dtype(dt))
            self._keep += [alloc, targs]
            words += [id(alloc), id(targs)]
        for kind, fn, arg in steps:
            words += [kind, fn, arg]
        self.desc = (ctypes.c_int64 * len(words))(*words)
        self._def = _MethodDef(name.encode(), e.fn, METH_VARARGS | METH_KEYWORDS, None)
        self.capsule = e.capsule_new(ctypes.addressof(self.desc), None, None)
        self.call = e.function_new(ctypes.addressof(self._def), self.capsule, None)
