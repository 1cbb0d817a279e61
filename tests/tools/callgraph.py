#!/usr/bin/python3
"""The proxy's module graph: which proxy/*.c file uses functions or data of
which other, read from the compiled objects (nm: a module's undefined
symbols, matched to the module that defines them). Prints the edges and
every cycle; exits 1 when there is a cycle and --strict is given.

    tests/tools/callgraph.py [BUILD_DIR] [--strict] [--dot]
"""
import glob
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True, text=True,
                         check=True).stdout
    defined = {line.split()[-1] for line in out.splitlines() if line.strip()}
    out = subprocess.run(["nm", "--undefined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    used = {line.split()[-1] for line in out.splitlines() if line.strip()}
    return defined, used


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    build = args[0] if args else "build"
    objs = sorted(glob.glob(os.path.join(build, "CMakeFiles/pgshard.dir/proxy/*.c.o")))
    if not objs:
        sys.exit(f"no objects under {build}/CMakeFiles/pgshard.dir/proxy: build first")
    owner, uses = {}, {}
    for obj in objs:
        mod = os.path.basename(obj)[:-len(".c.o")]
        defined, used = symbols(obj)
        for sym in defined:
            owner[sym] = mod
        uses[mod] = used
    edges = {m: sorted({owner[s] for s in used if s in owner and owner[s] != m})
             for m, used in uses.items()}
    if "--dot" in sys.argv:
        print("digraph proxy {")
        for m, to in edges.items():
            for t in to:
                print(f'  "{m}" -> "{t}";')
        print("}")
        return 0
    for m in sorted(edges):
        print(f"{m:12} -> {', '.join(edges[m]) or '-'}")
    # Strongly connected components (Tarjan): each with more than one
    # module is a cycle.
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
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
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in comps:
        print("cycle:", " <-> ".join(comp))
    if not comps:
        print("no cycles")
    return 1 if comps and "--strict" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
