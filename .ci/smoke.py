"""Smoke test of an installed elmo_fast (run outside the source tree): it imports, `info` reports it,
the C++ extension is loaded without a warning, and a tiny Elmo forward on the fused kernels equals the
eager reference."""

import os
import subprocess
import sys
import warnings

warnings.simplefilter("error")  # an install that falls back (with its warning) fails the smoke test
import torch  # noqa: E402

import elmo_fast  # noqa: E402
from elmo_fast import Elmo, _ext, batch_to_ids  # noqa: E402

assert "site-packages" in elmo_fast.__file__, f"not the installed package: {elmo_fast.__file__}"
print(subprocess.run([sys.executable, "-m", "elmo_fast.info"], capture_output=True, text=True, check=True).stdout)
assert _ext.cpp_ext() is not None, _ext.load_error("_C")
torch.manual_seed(0)
fast = Elmo("tiny", None, 2, dropout=0.0, stateful=False, backend="cpp")
ref = Elmo("tiny", None, 2, dropout=0.0, stateful=False, backend="torch")
ref.load_state_dict(fast.state_dict())
ids = batch_to_ids([["A", "tiny", "smoke", "test", "."], ["Odd", "lengths"], []])
with torch.no_grad():
    a, b = fast(ids), ref(ids)
assert torch.equal(a["mask"], b["mask"])
for x, y in zip(a["elmo_representations"], b["elmo_representations"]):
    torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
print(f"smoke test passed: elmo_fast {elmo_fast.__version__} from {os.path.dirname(elmo_fast.__file__)}; "
      "the C++ kernels equal the eager reference")
