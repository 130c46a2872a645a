"""`import bounds` stays light: no torch, so evaluation scripts import it fast."""

import subprocess
import sys


def test_import_bounds_does_not_import_torch():
    code = "import sys, bounds; bounds.occam_bound(10, 1, errors=0); print('torch' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"
