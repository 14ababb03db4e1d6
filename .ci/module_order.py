#!/usr/bin/env python3
"""Check that qlora-core's modules depend one way: every `crate::x` a module uses is declared
before it in lib.rs, and no two files of a module import each other. Prints the offending
edges and exits 1 if any."""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "qlora-core", "src")
files = {}
for directory, _, names in os.walk(root):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(directory, name)
            parts = tuple(os.path.relpath(path, root)[:-3].split(os.sep))
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            files[parts] = open(path).read()


def code(text):
    """The text before its tests, without comment lines."""
    text = text.split("#[cfg(test)]")[0]
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))


def known(path):
    while path and path not in files:
        path = path[:-1]
    return path


edges = set()
for module, text in files.items():
    text = code(text)
    for m in re.finditer(r"\bcrate::([a-z_0-9]+(?:::[a-z_0-9]+)*)", text):
        edges.add((module, known(tuple(m.group(1).split("::")))))
    for m in re.finditer(r"\bsuper::([a-z_0-9]+(?:::[a-z_0-9]+)*)", text):
        edges.add((module, known(module[:-1] + tuple(m.group(1).split("::")))))
edges = {(a, b) for a, b in edges if b and a != b}

order = re.findall(r"^pub mod ([a-z_0-9]+);", files[()], re.M)
problems = []
for a, b in sorted(edges):
    if a and a[0] != b[0] and a[0] in order and b[0] in order:
        if order.index(b[0]) > order.index(a[0]):
            problems.append(f"{'::'.join(a)} uses {'::'.join(b)}, declared after it in lib.rs")

# Within a module: two files that import each other (a child using its parent is fine).
within = {(a, b) for a, b in edges if a[: len(b)] != b and b[: len(a)] != a}
for a, b in sorted(within):
    if (b, a) in within and a < b:
        problems.append(f"{'::'.join(a)} and {'::'.join(b)} import each other")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"module order ok: {len(order)} modules, {len(files)} files")
