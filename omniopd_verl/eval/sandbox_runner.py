"""The trusted harness that runs *inside* the sandbox (its source is passed to `python -I -c`).

It reads one JSON payload from stdin (the nonce, the program, its tests, the limits), closes stdin, sets
the resource limits, runs the program, then the tests, in one namespace, and only if both return
normally writes the nonce to stdout. The parent counts a pass only when it finds that nonce, so a
program that leaves early with status 0 (`sys.exit(0)`, `os._exit(0)`, an `atexit` or excepthook exit)
fails: the nonce is written by this code after the last assertion, and the program never saw it on disk
or in its source. The test-only helpers below are put into the namespace *after* the program ran, so the
program cannot define them first; the test rewrite (`omniopd_verl.eval.harness`) calls them.

Kept to the standard library and Python 3.8 syntax: the fallback sandbox may run a system interpreter.
Limit: this is in-process. Code that walks the interpreter's own memory (frames, gc) can find the nonce;
no test format change closes that, but such code is deliberate, not an accident of sampling.
"""

import collections
import json
import os
import resource
import sys
import types

_NUMBERS = (bool, int, float, complex)
_SEQUENCES = (list, tuple, collections.deque)
_DICTS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)
_SETS = (set, frozenset)
# C types whose equality looks at attributes they carry (which may be the program's objects).
_OPAQUE = (types.SimpleNamespace, slice)
_HEAPTYPE, _IMMUTABLETYPE = 1 << 9, 1 << 8
_flags = type.__dict__["__flags__"].__get__  # not kind.__flags__: a metaclass could shadow that
_type, _id, _len, _isinstance = type, id, len, isinstance
_dict_items, _dict_get = dict.items, dict.__getitem__


def _fixed(kind):
    """A type the program cannot have written or changed: a static C type (int, str, re.Match, a
    generator, ...) or an immutable extension type. Every class defined in Python is a mutable heap type."""
    flags = _flags(kind)
    return not (flags & _HEAPTYPE) or bool(flags & _IMMUTABLETYPE)


class NotPlain(AssertionError):
    """A test saw a value that is not built from plain built-in types (e.g. an always-equal object)."""


def plain(value):
    """`value` if it is built only from types the program cannot control, else fail the test.

    Built-in containers are checked element by element; everything else must be a fixed type (`_fixed`).
    A user `int` subclass or any class can override `__eq__`, `__sub__`, `__bool__` to satisfy whatever
    a test compares; the fixed types' methods cannot be replaced."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = _type(item)
        if kind in _SEQUENCES or kind in _SETS or kind in _DICTS:
            if _id(item) in seen:
                continue
            seen.add(_id(item))
            if kind in _DICTS:
                for key, val in _dict_items(item):
                    stack.append(key)
                    stack.append(val)
            else:
                stack.extend(item)
        elif kind in _OPAQUE or not _fixed(kind):
            raise NotPlain("the tested value has type %s, not a plain built-in value" % kind.__name__)  # noqa: UP031 - any Python
    return value


def _same(a, b):
    """Python's == for plain values, computed without calling any method a program could have patched
    (collections.Counter, for one, is a Python class whose __eq__ can be reassigned)."""
    if a is b:
        return True
    ta, tb = _type(a), _type(b)
    if ta in _NUMBERS and tb in _NUMBERS:
        return a == b
    if ta in _DICTS and tb in _DICTS:
        if ta is collections.OrderedDict and tb is collections.OrderedDict:
            if [k for k, _ in _dict_items(a)] != [k for k, _ in _dict_items(b)]:
                return False
        if _len(a) != _len(b) or set(k for k, _ in _dict_items(a)) != set(k for k, _ in _dict_items(b)):
            return False
        return all(_same(v, _dict_get(b, k)) for k, v in _dict_items(a))
    if ta in _SETS and tb in _SETS:
        return frozenset(a) == frozenset(b)  # elements are plain (checked), so hashing/== are built-in
    if ta in _SEQUENCES or tb in _SEQUENCES:
        return ta is tb and _len(a) == _len(b) and all(_same(x, y) for x, y in zip(a, b))  # noqa: B905 - 3.8
    return a == b  # both fixed types (str, None, bytes, re.Match, ...): their own == is trustworthy


def equal(a, b):
    """`a == b` in a test, type-strict: both sides must be plain values (see `plain`)."""
    return _same(plain(a), plain(b))


def checked_call(fn):
    """Wrap a function the tests call so its result must be plain. Classes and built-ins pass through:
    tests build their inputs with them (e.g. `Pair(5, 24)`), and their results are checked where they
    are compared."""
    if _isinstance(fn, type) or _type(fn) is types.BuiltinFunctionType:
        return fn

    def call(*args, **kwargs):
        return plain(fn(*args, **kwargs))

    return call


HELPERS = {"__omniopd_plain": plain, "__omniopd_equal": equal, "__omniopd_call": checked_call}


def _limit(name, value):
    resource.setrlimit(getattr(resource, name), (value, value))


def main():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    os.close(0)  # the payload (and its nonce) cannot be read again; fd 0 becomes /dev/null
    os.open(os.devnull, os.O_RDONLY)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    os.environ.clear()  # the parent passed none; this drops what bwrap (PWD) or Python (LC_CTYPE) added
    for name, value in payload["limits"].items():
        _limit(name, value)
    nonce, write = payload["nonce"].encode(), os.write
    # The program gets its own __main__ module: `import __main__` must not reach this runner's helpers.
    module = types.ModuleType("__main__")
    module.__builtins__ = __builtins__
    sys.modules["__main__"] = module
    namespace = module.__dict__
    exec(compile(payload["code"], "solution.py", "exec", dont_inherit=True, optimize=0), namespace)
    if payload["tests"]:
        namespace.update(HELPERS)  # after the program: it cannot pre-define or capture them by name
        exec(compile(payload["tests"], "tests.py", "exec", dont_inherit=True, optimize=0), namespace)
    sys.stdout.flush()
    write(1, b"\n" + nonce + b"\n")


if __name__ == "__main__":
    main()
