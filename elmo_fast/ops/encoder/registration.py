"""Shape-only ("fake") kernel of the token dedup op (schema: csrc/char_cnn/char_cnn.cpp), for
torch.compile and opcheck. Imported by elmo_fast.ops.registration once the C++ extension has loaded."""

from __future__ import annotations

import torch


@torch.library.register_fake("elmo_fast::unique_rows")
def _unique_rows_fake(char_ids):
    n_unique = torch.library.get_ctx().new_dynamic_size()
    return char_ids.new_empty(n_unique, char_ids.shape[1]), char_ids.new_empty(char_ids.shape[0])
