"""The decoder LM's text: standard-library docstrings, built in a fresh interpreter.

`converter.demos.decoder_lm.corpus()` runs this file as `python -I -S lm_corpus.py`: what a
module's attributes document depends on the process's history (a package's submodules
become attributes once anything imported them; pytest replaces sys.stdout, pdb.set_trace
and threading.excepthook; a .pth file may swap distutils), so the text is only
reproducible from an interpreter with no site-packages and nothing imported before.
Standard library only. Output: the training text, a NUL byte, the held-out text.
"""

import importlib
import inspect
import pkgutil
import sys

SKIPPED = ("antigravity", "this", "idlelib", "tkinter", "turtle")  # side effects or GUI


def build() -> tuple[bytes, bytes]:
    """(train, held-out) bytes: each stdlib module's docstrings, every 10th module held out."""
    stdlib = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.endswith("python3.11"))
    names = [n for n in stdlib if not n.startswith("_") and n not in SKIPPED]
    train, held = [], []
    for index, name in enumerate(names):
        try:
            module = importlib.import_module(name)
        except Exception:  # some stdlib modules need optional system libraries
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module))[:200]:
            if not attr.startswith("_"):
                docs.append(inspect.getdoc(getattr(module, attr, None)) or "")
        text = "\n\n".join(d for d in dict.fromkeys(docs) if d and len(d) > 40)
        (held if index % 10 == 0 else train).append(text.replace("\0", ""))
    return "\n\n".join(train).encode("utf-8", "ignore"), "\n\n".join(held).encode("utf-8", "ignore")


if __name__ == "__main__":
    train_text, held_text = build()
    sys.stdout.buffer.write(train_text + b"\0" + held_text)
