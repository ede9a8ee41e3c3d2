import os

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # the default policy stalls small ops for 4 ms ticks here
