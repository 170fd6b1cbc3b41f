"""The package's top-level names, the lazily imported training-side ones included."""

from __future__ import annotations

import subprocess
import sys

import ln_diagnostics


def test_dir_lists_every_public_name_before_and_after_first_use():
    code = (
        "import sys, ln_diagnostics as ld; names = dir(ld); "
        "print(all(n in names for n in ld.__all__), 'torch' in sys.modules)"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert fresh == ["True", "False"]  # listed without importing torch
    assert set(ln_diagnostics.__all__) <= set(dir(ln_diagnostics))
    assert callable(ln_diagnostics.attach) and "attach" in dir(ln_diagnostics)
    assert dir(ln_diagnostics) == sorted(set(dir(ln_diagnostics)))
