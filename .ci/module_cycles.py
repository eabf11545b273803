#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

For every crate under `crates/` (and `benches/`), this reads each module's
`use crate::…`, `use super::…` and inline `crate::…`/`super::…` paths,
resolves them to the module they name (following `use` re-exports, so
`crate::Error` counts as a use of `error`), and builds a graph between
sibling modules: a reference from `a::x` to `b::y` is an edge `a -> b` among
the children of the crate root, and a reference from `a::x` to `a::z` is an
edge `x -> z` among the children of `a`. A module using its own parent or
child is not an edge (that is how Rust nests modules). Any cycle in any of
those graphs is reported with the lines that make it, and the script exits 1.

    python3 .ci/module_cycles.py            # check every crate
    python3 .ci/module_cycles.py --graph    # also print the edges per level
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def strip(src: str) -> str:
    """Removes comments, string and char literals, keeping line breaks."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # char literal ('a', '\n', '\u{..}') vs lifetime ('a)
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:i + 12])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_use(tree: str, prefix: list[str]) -> list[tuple[list[str], str | None]]:
    """Expands a use tree into (path, bound name) pairs; `a::{b, c as d}`."""
    tree = tree.strip()
    if tree.endswith("}") and "{" in tree:
        head, _, body = tree.partition("{")
        head_segs = [s.strip() for s in head.split("::") if s.strip()]
        out = []
        for part in split_top(body[:-1]):
            out += expand_use(part, prefix + head_segs)
        return out
    m = re.match(r"^(.*?)\s+as\s+(\w+)$", tree, re.S)
    path, alias = (m.group(1), m.group(2)) if m else (tree, None)
    segs = [s.strip() for s in path.split("::") if s.strip()]
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    if not prefix + segs:
        return []
    full = prefix + segs
    return [(full, alias or full[-1])]


class Module:
    def __init__(self, path: tuple[str, ...], file: Path):
        self.path = path
        self.file = file
        self.children: set[str] = set()
        self.uses: list[tuple[list[str], str | None, int]] = []  # (absolute-ish path, bound name, line)
        self.refs: list[tuple[list[str], int]] = []  # inline paths


def parse_uses(text: str) -> list[tuple[str, int]]:
    out = []
    for m in re.finditer(r"(?<![\w:])use\s+([^;]+);", text):
        out.append((m.group(1), text.count("\n", 0, m.start()) + 1))
    return out


def load_crate(src_root: Path, lib: Path) -> dict[tuple[str, ...], Module]:
    modules: dict[tuple[str, ...], Module] = {}

    def visit(path: tuple[str, ...], file: Path):
        text = strip(file.read_text())
        scan(path, file, text, 0, file.parent / (file.stem if path else ""), True)

    def scan(path, file, text, line0, dir_for_children, is_file_root):
        mod = modules.setdefault(path, Module(path, file))
        # find inline modules and child file modules at depth 0 of this text
        depth = 0
        i = 0
        inline_spans = []
        for m in re.finditer(r"[{}]|(?<![\w])mod\s+(\w+)\s*([;{])", text):
            tok = m.group(0)
            if tok == "{":
                depth += 1
                continue
            if tok == "}":
                depth -= 1
                continue
            if depth != 0:
                continue
            name, kind = m.group(1), m.group(2)
            mod.children.add(name)
            if kind == ";":
                child_dir = dir_for_children
                cand = [child_dir / f"{name}.rs", child_dir / name / "mod.rs"]
                for c in cand:
                    if c.exists():
                        if c.name == "mod.rs":
                            sub = strip(c.read_text())
                            scan(path + (name,), c, sub, 0, c.parent, True)
                        else:
                            sub = strip(c.read_text())
                            scan(path + (name,), c, sub, 0, child_dir / name, True)
                        break
            else:
                # inline module: find matching brace
                start = m.end()
                d, j = 1, start
                while j < len(text) and d:
                    if text[j] == "{":
                        d += 1
                    elif text[j] == "}":
                        d -= 1
                    j += 1
                body = text[start:j - 1]
                inline_spans.append((m.start(), j))
                scan(path + (name,), file, body, line0 + text.count("\n", 0, start), dir_for_children / name, False)
        del i
        # own text without inline module bodies
        own = text
        for a, b in reversed(inline_spans):
            own = own[:a] + "\n" * own.count("\n", a, b) + own[b:]
        # with depth tracking above, the inline-mod regex skipped nested braces; recompute depth skipping is fine
        for tree, ln in parse_uses(own):
            for segs, name in expand_use(tree, []):
                mod.uses.append((segs, name, line0 + ln))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", own):
            # skip the ones that are part of a use statement: they are in uses already
            segs = m.group(1).split("::")
            mod.refs.append((segs, line0 + own.count("\n", 0, m.start()) + 1))

    visit((), lib)
    return modules


def resolve(modules, here: tuple[str, ...], segs: list[str], seen=None) -> tuple[str, ...] | None:
    """Returns the module a path names (the deepest module on it, after re-exports)."""
    if seen is None:
        seen = set()
    cur: tuple[str, ...]
    i = 0
    if segs[0] == "crate":
        cur, i = (), 1
    elif segs[0] in ("super", "self"):
        cur = here
        while i < len(segs) and segs[i] in ("super", "self"):
            if segs[i] == "super":
                cur = cur[:-1]
            i += 1
    else:
        return None
    while i < len(segs):
        s = segs[i]
        m = modules.get(cur)
        if m is None:
            return cur
        if s in m.children:
            cur = cur + (s,)
            i += 1
            continue
        # an item or a re-export bound in `cur`
        key = (cur, s)
        if key in seen:
            return cur
        seen.add(key)
        for useg, name, _ in m.uses:
            if name == s and useg and useg[0] in ("crate", "super", "self"):
                target = resolve(modules, cur, useg, seen)
                if target is not None:
                    return target
            if name == "*" or (useg and useg[-1] == "*"):
                pass
        # glob re-exports: `pub use x::*`
        for useg, name, _ in m.uses:
            if useg and useg[-1] == "*" and useg[0] in ("crate", "super", "self"):
                target = resolve(modules, cur, useg[:-1], seen)
                if target is not None and target != cur:
                    tm = modules.get(target)
                    if tm and (s in tm.children or any(n == s for _, n, _ in tm.uses)):
                        return resolve(modules, target, ["self", s], seen)
        return cur
    return cur


def edges_of(modules):
    """(level, from child, to child) -> [(file, line, text)]."""
    edges = defaultdict(list)
    for mod in modules.values():
        paths = [(segs, ln) for segs, _, ln in mod.uses] + list(mod.refs)
        for segs, ln in paths:
            if not segs or segs[0] not in ("crate", "super", "self"):
                continue
            if segs[-1] == "*":
                segs = segs[:-1]
            target = resolve(modules, mod.path, segs)
            if target is None:
                continue
            a, b = mod.path, target
            k = 0
            while k < len(a) and k < len(b) and a[k] == b[k]:
                k += 1
            if k == len(a) or k == len(b):
                continue  # ancestor or descendant
            level = a[:k]
            edges[(level, a[k], b[k])].append((mod.file, ln, "::".join(segs)))
    return edges


def find_cycles(nodes_edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(nodes_edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes_edges):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    show = "--graph" in sys.argv
    crates = []
    for cargo in sorted(ROOT.glob("crates/*/Cargo.toml")) + [ROOT / "benches/Cargo.toml"]:
        d = cargo.parent
        for lib in (d / "src/lib.rs", d / "src/main.rs"):
            if lib.exists():
                crates.append((d.relative_to(ROOT), lib))
    failed = False
    for name, lib in crates:
        modules = load_crate(lib.parent, lib)
        edges = edges_of(modules)
        by_level = defaultdict(lambda: defaultdict(set))
        for (level, a, b) in edges:
            by_level[level][a].add(b)
        for level, graph in sorted(by_level.items()):
            where = "::".join(("crate",) + level)
            if show:
                for a in sorted(graph):
                    print(f"{name} {where}: {a} -> {', '.join(sorted(graph[a]))}")
            for comp in find_cycles(graph):
                failed = True
                print(f"\nmodule cycle in {name} under {where}: {' <-> '.join(comp)}")
                members = set(comp)
                for (lv, a, b), sites in sorted(edges.items()):
                    if lv == level and a in members and b in members:
                        f, ln, p = sites[0]
                        more = f" (+{len(sites) - 1} more)" if len(sites) > 1 else ""
                        print(f"  {a} -> {b}: {f.relative_to(ROOT)}:{ln} {p}{more}")
    if failed:
        print("\nModules must only point down: break each cycle (move the shared piece down, or have the lower module define a trait the upper one implements).")
        return 1
    print(f"no module cycles in {len(crates)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
