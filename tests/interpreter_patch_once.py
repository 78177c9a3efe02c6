"""Triton's interpreter patches triton.language once per launch, not once per helper call.

Under TRITON_INTERPRET=1, a launch (GridExecutor.__call__) swaps triton.language's builtins
for the interpreter's (``_patch_lang``) and restores them when the grid is done. Every call
of a @triton.jit helper inside it (InterpretedFunction.__call__) calls ``_patch_lang`` again
on the same modules, walking them with inspect.getmembers: ~0.7 ms a call, which the
weight-stationary kernels (dozens of helpers a step and tile) pay thousands of times a
launch: a third of a test's interpreted time (cProfile, test_lstm_layer_sizes at H=64
stationary: 3.5 of 11.5 s). Inside a launch whose patch already covers a helper's
modules the helper's call changes nothing, so ``install`` makes it skip the walk; outside
a launch, or for a module the launch did not patch, it patches as before. The kernels'
semantics under the interpreter are the interpreter's own either way.

Where the interpreter's internals are not as expected (another Triton), nothing is changed.
"""
from __future__ import annotations

import inspect


def install() -> bool:
    """Wrap triton.runtime.interpreter._patch_lang (see the module doc); whether it did."""
    try:
        from triton.runtime import interpreter as ti
        import triton.language as tl
        patch, scope_cls = ti._patch_lang, ti._LangPatchScope
        ti.GridExecutor.__call__, ti.InterpretedFunction.__call__  # noqa: B018
    except (ImportError, AttributeError):
        return False
    if getattr(patch, "_once", False):
        return True
    patched: list[set] = []  # the modules each open launch patched, innermost last
    langs_of: dict[int, frozenset] = {}

    def langs(fn) -> frozenset:
        g = fn.__globals__
        if id(g) not in langs_of:  # (a module's globals: one dict for its life)
            langs_of[id(g)] = frozenset(id(v) for v in g.values()
                                        if inspect.ismodule(v) and v in (tl, tl.core))
        return langs_of[id(g)]

    def patch_once(fn):
        mine = langs(fn)
        if patched and mine <= patched[-1]:
            return scope_cls()  # already patched by the launch: nothing to undo either
        scope = patch(fn)
        caller = inspect.currentframe().f_back
        if caller is not None and caller.f_code is ti.GridExecutor.__call__.__code__:
            patched.append(set(mine))
            restore = scope.restore

            def restore_and_close():
                patched.pop()
                restore()
            scope.restore = restore_and_close
        elif patched:
            patched[-1] |= mine  # a helper's own modules, patched inside the launch
        return scope

    patch_once._once = True
    ti._patch_lang = patch_once
    return True
