"""Check ``target`` blocks of a .hw file and build ``ir.Target`` objects.

Instruction bodies go through the kernel front end (``check_def``), so an
instruction's semantics is an ordinary checked ``ir.Kernel``.
"""
from __future__ import annotations

from pathlib import Path

from lark import Token, Tree

from ir import dtypes
from ir.errors import IsamapError, Source, Span
from ir.expr import Const
from ir.kernel import TensorDecl
from ir.target import Engine, Instruction, Memory, Operand, Target

from .frontend.ast import RawDef
from .frontend.sema import check_def
from .host import feature_name, host_cache_bytes, host_cache_ways, host_features

_BYTES = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


class _Value:
    def __init__(self, kind: str, value, unit: str | None, span: Span):
        self.kind, self.value, self.unit, self.span = kind, value, unit, span


class _TargetChecker:
    def __init__(self, src: Source):
        self.src = src

    def sp(self, x) -> Span:
        if isinstance(x, Token):
            return Span(self.src, x.line, x.column, x.end_line, x.end_column)
        m = x.meta
        return Span(self.src, m.line, m.column, m.end_line, m.end_column)

    # ------------------------------------------------------------------ values
    def value(self, t) -> _Value:
        if t.data == "quantity":
            num, unit = t.children
            v = float(num) if ("." in num or "e" in num.lower()) else int(num)
            return _Value("number", v, None if unit is None else str(unit), self.sp(t))
        if t.data == "value_name":
            n = str(t.children[0])
            if n in ("true", "false"):
                return _Value("bool", n == "true", None, self.sp(t))
            return _Value("name", n, None, self.sp(t))
        if t.data == "value_string":
            return _Value("string", str(t.children[0])[1:-1], None, self.sp(t))
        items = [self.value(c) for c in t.children if c is not None]
        return _Value("list", items, None, self.sp(t))

    def props(self, trees) -> dict[str, tuple[_Value, Span]]:
        out = {}
        for p in trees:
            name = p.children[0]
            if str(name) in out:
                raise IsamapError(f"property '{name}' is given twice", self.sp(name))
            out[str(name)] = (self.value(p.children[1]), self.sp(name))
        return out

    def take(self, props, name, kind, default=None, required=None, unit=None, positive=False):
        if name not in props:
            if required:
                raise IsamapError(f"{required} needs '{name} = ...'", None)
            return default
        v, sp = props.pop(name)
        if kind == "bytes":
            if v.kind != "number" or v.unit not in _BYTES:
                raise IsamapError(f"'{name}' must be a size in bytes (e.g. 64 KiB)", v.span)
            x = v.value * _BYTES[v.unit]
            if x <= 0:
                raise IsamapError(f"'{name}' must be positive", v.span)
            return int(x)
        if kind == "bandwidth":
            if v.kind != "number" or v.unit not in (None, "B/cycle"):
                raise IsamapError(f"'{name}' must be a bandwidth in B/cycle", v.span)
            if v.value <= 0:
                raise IsamapError(f"'{name}' must be positive", v.span)
            return float(v.value)
        if kind == "cycles":
            if v.kind != "number" or v.unit not in (None, "cycle", "cycles") or not isinstance(v.value, int):
                raise IsamapError(f"'{name}' must be a whole number of cycles", v.span)
            if v.value < 0 or (positive and v.value == 0):
                raise IsamapError(f"'{name}' must be {'positive' if positive else 'non-negative'}", v.span)
            return v.value
        if kind == "int":
            if v.kind != "number" or v.unit is not None or not isinstance(v.value, int) or v.value < 1:
                raise IsamapError(f"'{name}' must be a positive integer", v.span)
            return v.value
        if kind == "bool":
            if v.kind != "bool":
                raise IsamapError(f"'{name}' must be true or false", v.span)
            return v.value
        if kind == "name":
            if v.kind != "name":
                raise IsamapError(f"'{name}' must be a name", v.span)
            return v.value, v.span
        if kind == "names":
            items = v.value if v.kind == "list" else [v]
            for it in items:
                if it.kind != "name":
                    raise IsamapError(f"'{name}' must be a list of names", it.span)
            return [(it.value, it.span) for it in items]
        raise AssertionError(kind)

    def no_leftovers(self, props, what):
        for name, (v, sp) in props.items():
            raise IsamapError(f"unknown property '{name}' for {what}", sp)

    # ------------------------------------------------------------------ declarations
    def target(self, tree: Tree) -> Target:
        """A target; ``target "B" : "A" { ... }`` starts from target A (a built-in name or a .hw
        path relative to this file) and replaces or adds the settings, memories, engines and
        instructions it declares (each by name): a chip variant in a few lines."""
        name = str(tree.children[0]).strip('"')
        base = self.base(tree.children[1]) if tree.children[1] is not None else None
        mems, engines, instrs, settings = [], [], [], []
        for c in tree.children[2:]:
            {"memory": mems, "engine": engines, "instr": instrs, "prop": settings}[c.data].append(c)
        props = self.props(settings)
        if "cores" in props and props["cores"][0].kind == "name" and props["cores"][0].value == "host":
            import os
            props.pop("cores")
            props["cores"] = (_Value("number", os.cpu_count() or 1, None, None), None)
        cores = self.take(props, "cores", "int", base.cores if base else 1)
        window = self.take(props, "window", "int", base.window if base else 16)
        main = self.take(props, "main", "name")
        fallback = self.take(props, "fallback", "name")
        backend = self.take(props, "backend", "name")
        if backend is not None and backend[0] not in ("sim", "llvm", "cuda"):
            raise IsamapError("'backend' must be sim, llvm or cuda", backend[1])
        if fallback is not None and fallback[0] != "scalar":
            raise IsamapError("'fallback' must be 'scalar'", fallback[1])
        memories = self.unique([self.memory(m) for m in mems], "memory")
        if base is not None:
            memories = _merged(base.memories, memories)
        if not memories:
            raise IsamapError(f"target '{name}' declares no memory", self.sp(tree))
        mem_names = {m.name: m for m in memories}
        if main is None:
            main_name = base.main if base is not None else memories[0].name
        else:
            main_name, sp = main
            if main_name not in mem_names:
                raise IsamapError(f"unknown memory '{main_name}'", sp)
        engs = self.unique([self.engine(e) for e in engines], "engine")
        if base is not None:
            engs = _merged(base.engines, engs)
        eng_names = {e.name for e in engs}
        self.left_out: list[Instruction] = []
        ins = self.unique([x for x in (self.instr(i, mem_names, eng_names) for i in instrs) if x is not None],
                          "instruction")
        if base is not None:
            ins = _merged(base.instrs, ins)
        # a memory only left-out instructions use is left out too (AMX's tiles on a host without them)
        used = {o.memory for i in ins for o in i.operands} | {main_name}
        gone = {o.memory for i in self.left_out for o in i.operands} - used
        memories = [m for m in memories if m.name not in gone]
        self.no_leftovers(props, f"target '{name}'")
        fallback_name = fallback[0] if fallback else (base.prop("fallback") if base else None)
        extra = (("fallback", fallback_name),) if fallback_name else ()
        extra += (("backend", backend[0] if backend else (base.prop("backend", "sim") if base else "sim")),)
        t = Target(name, tuple(memories), tuple(engs), tuple(ins), cores, window, main_name, extra,
                   span=self.sp(tree))
        self.reachability(t)
        return t

    def base(self, tok) -> Target:
        """The target a derived one starts from."""
        import hw_models
        ref = str(tok).strip('"')
        here = Path(self.src.name).parent
        path = here / ref if (ref.endswith(".hw") or "/" in ref) else None
        try:
            resolved = hw_models.resolve_path(str(path) if path is not None else ref).resolve()
        except IsamapError as e:
            raise IsamapError(f"cannot derive from '{ref}': {e.message}", self.sp(tok)) from None
        if resolved in _DERIVING or resolved == Path(self.src.name).resolve():
            raise IsamapError(f"target '{ref}' derives from itself", self.sp(tok))
        _DERIVING.add(resolved)
        try:
            return hw_models.load(str(resolved))
        except IsamapError as e:  # an error in the base (a cycle through it too), located at this reference
            raise IsamapError(f"cannot derive from '{ref}': {e.message}", self.sp(tok)) from None
        finally:
            _DERIVING.discard(resolved)

    def unique(self, items, what):
        seen = set()
        for it in items:
            if it.name in seen:
                raise IsamapError(f"{what} '{it.name}' is declared twice", it.span)
            seen.add(it.name)
        return items

    def memory(self, tree: Tree) -> Memory:
        name = str(tree.children[0])
        props = self.props(tree.children[1:])
        what = f"memory '{name}'"
        cap = self.take(props, "capacity", "bytes")
        if cap is None:
            raise IsamapError(f"{what} needs 'capacity = ...'", self.sp(tree.children[0]))
        bw = self.take(props, "bandwidth", "bandwidth")
        lat = self.take(props, "latency", "cycles", 0)
        shared = self.take(props, "shared", "bool", False)
        banks = self.take(props, "banks", "int", 1)
        row = self.take(props, "row", "bytes")
        holds = self.take(props, "holds", "names", [])
        ways = self.take(props, "ways", "int", 0)
        level = self.take(props, "host_cache", "int")
        if level is not None:  # the figures are fallbacks: the host's own cache of that level wins
            cap = host_cache_bytes(level) or cap
            ways = host_cache_ways(level) or ways
        for h, sp in holds:
            if h not in dtypes.BY_NAME:
                raise IsamapError(f"unknown type '{h}'", sp)
        self.no_leftovers(props, what)
        return Memory(name, cap, bw, lat, shared, banks, row,
                      tuple(dtypes.BY_NAME[h].name for h, _ in holds), ways, span=self.sp(tree.children[0]))

    def engine(self, tree: Tree) -> Engine:
        name = str(tree.children[0])
        props = self.props(tree.children[1:])
        count = self.take(props, "count", "int", 1)
        shared = self.take(props, "shared", "bool", False)
        self.no_leftovers(props, f"engine '{name}'")
        return Engine(name, count, shared, span=self.sp(tree.children[0]))

    def instr(self, tree: Tree, mems: dict[str, Memory], engines: set[str]) -> Instruction | None:
        """The instruction, checked; None where it ``requires`` a CPU feature the host lacks (a
        host target's instruction the machine compiling for itself cannot run: left out, so
        the mapping pass offers the others)."""
        name_tok = tree.children[0]
        name = str(name_tok)
        what = f"instruction '{name}'"
        ins_t, outs_t = tree.children[1], tree.children[2]
        props = [c for c in tree.children[3:] if c.data == "prop"]
        stmts = [c for c in tree.children[3:] if c.data == "stmt"]
        operands = [c for c in (ins_t.children if ins_t is not None else [])]
        n_in = len(operands)
        operands += [c for c in (outs_t.children if outs_t is not None else [])]
        ops: list[Operand] = []
        decls_in, decls_out = [], []
        for i, c in enumerate(operands):
            ty, dims, oname, mem = c.children
            dt = dtypes.BY_NAME[str(ty)]
            shape = []
            for d in (dims.children if dims is not None else []):
                if d is None:
                    continue
                if d.data != "dim_int":
                    raise IsamapError("instruction operand shapes must be integer constants",
                                      self.sp(d.children[0]))
                v = int(d.children[0])
                if v < 1:
                    raise IsamapError("instruction operand extents must be positive", self.sp(d.children[0]))
                shape.append(v)
            if str(mem) not in mems:
                raise IsamapError(f"unknown memory '{mem}' (declared: {', '.join(mems)})", self.sp(mem))
            m = mems[str(mem)]
            if m.holds and dt.name not in m.holds:
                raise IsamapError(f"memory '{m.name}' cannot hold {dt} (it holds {', '.join(m.holds)})",
                                  self.sp(ty))
            op = Operand(str(oname), dt, tuple(shape), m.name, i >= n_in)
            if op.bytes > m.capacity:
                raise IsamapError(f"operand '{op.name}' needs {op.bytes} bytes but memory '{m.name}' holds "
                                  f"{m.capacity}", self.sp(oname))
            ops.append(op)
            decl = TensorDecl(op.name, dt, tuple(Const(v, dtype=dtypes.INT32) for v in shape), True,
                              self.sp(oname))
            (decls_out if op.is_output else decls_in).append(decl)
        if not decls_out:
            raise IsamapError(f"{what} has no output operand", self.sp(name_tok))
        from .frontend.parser import _Builder
        b = _Builder(self.src)
        raw = RawDef(name, decls_in, decls_out, [b.transform(s) for s in stmts], self.sp(name_tok))
        body = check_def(raw)
        for op in ops:
            if op.is_output:
                got = tuple(_const_extent(d) for d in body.dims(op.name))
                if got != op.shape:
                    raise IsamapError(f"the body of {what} writes {op.name} over {list(got)} but the operand "
                                      f"is {list(op.shape)}", self.sp(name_tok))
        p = self.props(props)
        eng = self.take(p, "engine", "name")
        if eng is None:
            raise IsamapError(f"{what} needs 'engine = ...'", self.sp(name_tok))
        if eng[0] not in engines:
            raise IsamapError(f"unknown engine '{eng[0]}' (declared: {', '.join(sorted(engines)) or 'none'})",
                              eng[1])
        occ = self.take(p, "occupancy", "cycles", positive=True)
        lat = self.take(p, "latency", "cycles", 0)
        port = self.take(p, "port", "bandwidth")
        if occ is None and port is None:
            raise IsamapError(f"{what} needs 'occupancy = N' or 'port = N B/cycle'", self.sp(name_tok))
        mc = self.take(p, "multicast", "int", 1)
        tr = self.take(p, "transpose", "names", [])
        for n, sp in tr:
            if n not in {o.name for o in ops}:
                raise IsamapError(f"'{n}' is not an operand of {what}", sp)
        partial = self.take(p, "partial", "bool", False)
        gather = self.take(p, "gather", "bool", False)
        batch = self.take(p, "batch", "int", 1)
        requires = self.take(p, "requires", "names", [])
        self.no_leftovers(p, what)
        extra = ()
        instr = Instruction(name, tuple(ops), body, eng[0], occ, lat, port, mc, tuple(n for n, _ in tr),
                            partial, gather, batch, extra, span=self.sp(name_tok))
        if requires and not {feature_name(n) for n, _ in requires} <= host_features():
            self.left_out.append(instr)
            return None
        return instr

    def reachability(self, t: Target):
        links = {(o.memory, r.memory) for i in t.instrs for o in i.inputs for r in i.outputs}
        seen = {t.main}
        frontier = [t.main]
        while frontier:
            m = frontier.pop()
            for a, b in links:
                if a == m and b not in seen:
                    seen.add(b)
                    frontier.append(b)
        for m in t.memories:
            if m.name not in seen:
                raise IsamapError(f"memory '{m.name}' cannot be reached from main memory '{t.main}': no "
                                  f"instruction moves data into it", m.span)


_DERIVING: set = set()  # .hw files whose base targets are being loaded (catches cycles)


def _merged(base: tuple, own: list) -> list:
    """The base's declarations with same-named ones replaced by this target's, new ones after."""
    mine = {x.name: x for x in own}
    return [mine.pop(x.name, x) for x in base] + list(mine.values())


def _const_extent(d) -> int:
    from ir.expr import evaluate_int
    return evaluate_int(d.extent, {})


def check_targets(pf, src: Source) -> list[Target]:
    ch = _TargetChecker(src)
    out = []
    for t in pf.targets:
        out.append(ch.target(t))
    return out
