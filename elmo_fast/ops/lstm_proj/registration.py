"""Shape-only ("fake") kernels of the LSTM ops (schemas: csrc/lstm_proj/schemas.cpp), so that
torch.compile and opcheck can trace them. Imported by elmo_fast._ext once the C++ extension has
loaded. The autograd of every LSTM op is `LstmProjFunction` / `LstmProjPairFunction` (function.py):
the raw ops are the kernels those call."""

from __future__ import annotations

import torch

from .reference import state_dtype


@torch.library.register_fake("elmo_fast::lstm_proj_fwd")
def _fwd_fake(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse, save_cache):
    B, T, _ = x.shape
    C4, P = w_rec.shape
    C = C4 // 4
    if save_cache:
        # the gate activations and the cell are cached in fp32 for bf16/fp16 inputs (GPU backends)
        sdt = state_dtype(x.dtype)
        cache = [x.new_empty(T, B, C4, dtype=sdt), x.new_empty(T, B, C, dtype=sdt), x.new_empty(T, B, C),
                 x.new_empty(T, B, P), x.new_empty(T, B, P)]
    else:
        cache = [x.new_empty(0) for _ in range(5)]
    return (x.new_empty(B, T, P), x.new_empty(B, P), x.new_empty(B, C), *cache)


@torch.library.register_fake("elmo_fast::lstm_proj_fwd_packed")
def _fwd_packed_fake(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, w_in_packed, w_rec_packed, w_proj_packed, cell_clip,
                     proj_clip, reverse, save_cache):
    return _fwd_fake(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse, save_cache)


@torch.library.register_fake("elmo_fast::lstm_proj_bwd")
def _bwd_fake(grad_out, grad_hn, grad_cn, x, lengths, w_in, w_rec, w_proj, h0, c0, gates, c_raw, m, h_raw, h_prev,
              cell_clip, proj_clip, reverse):
    return (torch.empty_like(x), torch.empty_like(w_in), torch.empty_like(w_rec), w_in.new_empty(w_in.shape[0]),
            torch.empty_like(w_proj), torch.empty_like(h0), torch.empty_like(c0))



@torch.library.register_fake("elmo_fast::lstm_proj_fwd_pair")
def _fwd_pair_fake(fwd, bwd, cell_clip, proj_clip, save_cache):
    return [list(_fwd_fake(*d[:8], cell_clip, proj_clip, i == 1, save_cache)) for i, d in enumerate((fwd, bwd))]


@torch.library.register_fake("elmo_fast::lstm_proj_bwd_pair")
def _bwd_pair_fake(fwd, bwd, cell_clip, proj_clip):
    return [list(_bwd_fake(*d, cell_clip, proj_clip, i == 1)) for i, d in enumerate((fwd, bwd))]


@torch.library.register_fake("elmo_fast::lstm_proj_fwd_bf16")
def _fwd_bf16_fake(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse):
    B, T, _ = x.shape
    P, C = w_proj.shape
    return x.new_empty(B, T, P), x.new_empty(B, P), x.new_empty(B, C)
