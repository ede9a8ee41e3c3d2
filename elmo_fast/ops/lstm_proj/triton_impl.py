"""Triton backend of lstm_proj. Forward: for small C x P one kernel runs the whole time loop with the
recurrent weights on chip (`_lstm_proj_fwd_loop_kernel`); otherwise fused pointwise step kernels are
driven by a Python time loop whose GEMMs are torch's (cuBLAS on a GPU). Backward: the step kernels. Same argument and cache layout as the
C++ op `elmo_fast::lstm_proj_fwd` / `lstm_proj_bwd` (see csrc/lstm_proj/lstm_proj.h), so
`LstmProjFunction` drives either.

bf16/fp16 models: the GEMM operands and results and the outputs stay in the model's dtype, but the
cell state, the cached gate activations and cell (c_raw) and the carried cell gradient are fp32
(`state_dtype`). The cell is a running sum over every step: rounding it to bf16 at each step adds
an error that grows with the sequence. And a gate near saturation, f = 0.9975 say, is 0.9961 in
bf16, so backward's f * (1 - f) is 56 % off. Measured against fp64 run on the same bf16 inputs
(48 steps, f near 1): with both in bf16, the outputs had 3-5.6x and the gradients 2.5-11x the error
of the eager reference run in bf16; with both in fp32, 0.08-0.8x and 0.2-1.05x
(tests/ops/test_lstm_proj_triton.py::test_half_precision_state).

On the CPU these kernels only run under `TRITON_INTERPRET=1` (tests). The interpreter has no
libdevice, so tanh is written as 2 * sigmoid(2x) - 1 (abs. error ~2e-7 in fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._backend import on_device_of_first_arg
from .plan import uses_time_loop
from .reference import state_dtype


@triton.jit
def _clamp(x, hi):
    # NaN stays NaN, as in torch.clamp (a plain minimum/maximum may return the other operand on a GPU)
    return tl.minimum(tl.maximum(x, -hi, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _lstm_proj_fwd_step_kernel(
    G,  # [n, 4C] pre-activations (bias not added)
    ACT,  # [n, 4C] post-activations i, f, g, o out (state dtype; may be G itself)
    BIAS,  # [4C]
    CST,  # [n, C] cell state: previous in, clipped new out
    CRAW,  # [n, C] unclipped new cell
    M,  # [n, C] o * tanh(clip(c))
    C,
    CLIP,  # [1] the cell clip in the state dtype (a float argument would be fp32)
    HAS_CLIP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,  # compute dtype: fp32, or fp64 for fp64 inputs
):
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = j < C
    g_row = G + r * 4 * C
    zi = tl.load(g_row + j, mask=mask).to(ACC) + tl.load(BIAS + j, mask=mask).to(ACC)
    zf = tl.load(g_row + C + j, mask=mask).to(ACC) + tl.load(BIAS + C + j, mask=mask).to(ACC)
    zg = tl.load(g_row + 2 * C + j, mask=mask).to(ACC) + tl.load(BIAS + 2 * C + j, mask=mask).to(ACC)
    zo = tl.load(g_row + 3 * C + j, mask=mask).to(ACC) + tl.load(BIAS + 3 * C + j, mask=mask).to(ACC)
    i = tl.sigmoid(zi)
    f = tl.sigmoid(zf)
    g = _tanh(zg)
    o = tl.sigmoid(zo)
    c_prev = tl.load(CST + r * C + j, mask=mask).to(ACC)
    cn = i * g + f * c_prev
    cc = cn
    if HAS_CLIP:
        clip = tl.load(CLIP)
        cc = _clamp(cn, clip)
    tl.store(CRAW + r * C + j, cn, mask=mask)
    tl.store(CST + r * C + j, cc, mask=mask)
    tl.store(M + r * C + j, o * _tanh(cc), mask=mask)
    a_row = ACT + r * 4 * C
    tl.store(a_row + j, i, mask=mask)
    tl.store(a_row + C + j, f, mask=mask)
    tl.store(a_row + 2 * C + j, g, mask=mask)
    tl.store(a_row + 3 * C + j, o, mask=mask)


@triton.jit
def _lstm_proj_bwd_step_kernel(
    G,  # [n, 4C] cached post-activations
    CRAW,  # [n, C] unclipped cell of this step
    CRAW_PREV,  # [n, C] unclipped cell of the previous step (rows whose FIRST is 0)
    C0,  # [n, C] initial cell (rows whose FIRST is 1), used unclipped like the reference
    FIRST,  # [n] int32: 1 where this step is the row's first
    DM,  # [n, C] d(o * tanh(c))
    DC,  # [n, C] carried d c: in for this step, out for the previous one
    DZ,  # [n, 4C] d pre-activations out
    C,
    CLIP,  # [1] the cell clip in the state dtype (a float argument would be fp32)
    HAS_CLIP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,  # compute dtype: fp32, or fp64 for fp64 inputs
):
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = j < C
    g_row = G + r * 4 * C
    i = tl.load(g_row + j, mask=mask).to(ACC)
    f = tl.load(g_row + C + j, mask=mask).to(ACC)
    g = tl.load(g_row + 2 * C + j, mask=mask).to(ACC)
    o = tl.load(g_row + 3 * C + j, mask=mask).to(ACC)
    cn = tl.load(CRAW + r * C + j, mask=mask).to(ACC)
    first = tl.load(FIRST + r)
    cp_raw = tl.load(CRAW_PREV + r * C + j, mask=mask).to(ACC)
    c0 = tl.load(C0 + r * C + j, mask=mask).to(ACC)
    cc = cn
    pass_c = tl.full([BLOCK_C], 1.0, ACC)
    cp = cp_raw
    if HAS_CLIP:
        clip = tl.load(CLIP)
        cc = _clamp(cn, clip)
        pass_c = tl.where(tl.abs(cn) <= clip, 1.0, 0.0)
        cp = _clamp(cp_raw, clip)
    c_prev = tl.where(first != 0, c0, cp)
    tc = _tanh(cc)
    dm = tl.load(DM + r * C + j, mask=mask).to(ACC)
    dcn = (dm * o * (1.0 - tc * tc) + tl.load(DC + r * C + j, mask=mask).to(ACC)) * pass_c
    d_row = DZ + r * 4 * C
    tl.store(d_row + j, dcn * g * i * (1.0 - i), mask=mask)
    tl.store(d_row + C + j, dcn * c_prev * f * (1.0 - f), mask=mask)
    tl.store(d_row + 2 * C + j, dcn * i * (1.0 - g * g), mask=mask)
    tl.store(d_row + 3 * C + j, dm * tc * o * (1.0 - o), mask=mask)
    tl.store(DC + r * C + j, dcn * f, mask=mask)


@triton.jit
def _lstm_proj_fwd_loop_kernel(
    GX,  # [T, B, 4C] input map x @ w_in^T (sorted rows)
    ACT,  # [T, B, 4C] fp32 post-activations i, f, g, o out when SAVE and SPLIT_ACT (else into GX)
    LEN,  # [B] int64 lengths, sorted descending
    WREC,  # [4C, P]
    BIAS,  # [4C]
    WPROJ,  # [P, C]
    H0,  # [B, P] sorted
    C0,  # [B, C] sorted
    HRAW,  # [T, B, P] zeros in; projections before the clip out (only active positions written)
    CRAW,  # [T, B, C] unclipped cell (SAVE)
    M,  # [T, B, C] o * tanh(clip(c)) (SAVE)
    HPREV,  # [T, B, P] state entering each step (SAVE)
    HN,  # [B, P] final projected state out
    CN,  # [B, C] final (clipped) cell out
    T,
    B,
    C,
    P,
    cell_clip,
    proj_clip,
    HAS_CCLIP: tl.constexpr,
    HAS_PCLIP: tl.constexpr,
    REVERSE: tl.constexpr,
    SAVE: tl.constexpr,
    SPLIT_ACT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The whole time loop in one kernel: each program owns BLOCK_B rows and keeps the recurrent and
    projection weights and its rows' (h, c) on chip for all T steps -- no launch per step, no state
    round trip through global memory. Only for small C x P (plan.TIME_LOOP_MAX_WEIGHTS)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    cc = tl.arange(0, BLOCK_C)
    cmask = cc < C
    pp = tl.arange(0, BLOCK_P)
    pmask = pp < P
    lens = tl.load(LEN + rows, mask=rmask, other=0)
    # w_rec^T gate blocks [P, C] and w_proj^T [C, P]; padded entries are 0, which keeps padded
    # columns of c, m and h at exactly 0 through every step.
    # Weights go to fp32 on chip: bf16/fp16 values are exact in tf32, so the TF32 dot below loses
    # nothing on them (the Triton interpreter also miscomputes bf16 dots, which this avoids).
    wmask = pmask[:, None] & cmask[None, :]
    wi = tl.load(WREC + (0 * C + cc[None, :]) * P + pp[:, None], mask=wmask, other=0.0).to(tl.float32)
    wf = tl.load(WREC + (1 * C + cc[None, :]) * P + pp[:, None], mask=wmask, other=0.0).to(tl.float32)
    wg = tl.load(WREC + (2 * C + cc[None, :]) * P + pp[:, None], mask=wmask, other=0.0).to(tl.float32)
    wo = tl.load(WREC + (3 * C + cc[None, :]) * P + pp[:, None], mask=wmask, other=0.0).to(tl.float32)
    wp = tl.load(WPROJ + pp[None, :] * C + cc[:, None], mask=cmask[:, None] & pmask[None, :], other=0.0).to(tl.float32)
    bi = tl.load(BIAS + 0 * C + cc, mask=cmask, other=0.0).to(tl.float32)
    bf = tl.load(BIAS + 1 * C + cc, mask=cmask, other=0.0).to(tl.float32)
    bg = tl.load(BIAS + 2 * C + cc, mask=cmask, other=0.0).to(tl.float32)
    bo = tl.load(BIAS + 3 * C + cc, mask=cmask, other=0.0).to(tl.float32)
    rc_mask = rmask[:, None] & cmask[None, :]
    rp_mask = rmask[:, None] & pmask[None, :]
    h = tl.load(H0 + rows[:, None] * P + pp[None, :], mask=rp_mask, other=0.0).to(tl.float32)
    c = tl.load(C0 + rows[:, None] * C + cc[None, :], mask=rc_mask, other=0.0).to(tl.float32)
    for s in range(0, T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        act = rmask & (t < lens)
        ac = act[:, None] & cmask[None, :]
        ap = act[:, None] & pmask[None, :]
        g_off = (t * B + rows[:, None]).to(tl.int64) * 4 * C + cc[None, :]
        g_ptr = GX + g_off
        if IEEE:  # fp32 weights (or half-precision training): no TF32 rounding
            ri = tl.dot(h, wi, input_precision="ieee")
            rf = tl.dot(h, wf, input_precision="ieee")
            rg = tl.dot(h, wg, input_precision="ieee")
            ro = tl.dot(h, wo, input_precision="ieee")
        else:
            ri = tl.dot(h, wi, input_precision="tf32")
            rf = tl.dot(h, wf, input_precision="tf32")
            rg = tl.dot(h, wg, input_precision="tf32")
            ro = tl.dot(h, wo, input_precision="tf32")
        i = tl.sigmoid(tl.load(g_ptr, mask=ac, other=0.0).to(tl.float32) + ri + bi[None, :])
        f = tl.sigmoid(tl.load(g_ptr + C, mask=ac, other=0.0).to(tl.float32) + rf + bf[None, :])
        g = _tanh(tl.load(g_ptr + 2 * C, mask=ac, other=0.0).to(tl.float32) + rg + bg[None, :])
        o = tl.sigmoid(tl.load(g_ptr + 3 * C, mask=ac, other=0.0).to(tl.float32) + ro + bo[None, :])
        cn = i * g + f * c
        ccl = cn
        if HAS_CCLIP:
            ccl = _clamp(cn, cell_clip)
        m = o * _tanh(ccl)
        if IEEE:
            hr = tl.dot(m, wp, input_precision="ieee")
        else:
            hr = tl.dot(m, wp, input_precision="tf32")
        hcl = hr
        if HAS_PCLIP:
            hcl = _clamp(hr, proj_clip)
        tp = (t * B + rows[:, None]).to(tl.int64)
        tl.store(HRAW + tp * P + pp[None, :], hr, mask=ap)
        if SAVE:
            # a separate pointer only when needed: on sm_80 the fp32 64 x 64 kernel spilled with it
            a_ptr = ACT + g_off if SPLIT_ACT else g_ptr
            tl.store(a_ptr, i, mask=ac)
            tl.store(a_ptr + C, f, mask=ac)
            tl.store(a_ptr + 2 * C, g, mask=ac)
            tl.store(a_ptr + 3 * C, o, mask=ac)
            tl.store(CRAW + tp * C + cc[None, :], cn, mask=ac)
            tl.store(M + tp * C + cc[None, :], m, mask=ac)
            tl.store(HPREV + tp * P + pp[None, :], h, mask=ap)
        c = tl.where(ac, ccl, c)
        h = tl.where(ap, hcl, h)
    tl.store(HN + rows[:, None] * P + pp[None, :], h, mask=rp_mask)
    tl.store(CN + rows[:, None] * C + cc[None, :], c, mask=rc_mask)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every dimension >= 16


def _fwd_time_loop(x, xs, gates, perm, inv, sorted_len, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse,
                   save_cache):
    T, B, _ = gates.shape
    C4, P = w_rec.shape
    C = C4 // 4
    h0s = h0.index_select(0, perm).contiguous()
    c0s = c0.index_select(0, perm).contiguous()
    h_raw = x.new_zeros(T, B, P)
    if save_cache:
        act = _act_buffer(gates)
        c_raw = x.new_zeros(T, B, C, dtype=state_dtype(x.dtype))
        m, h_prev = x.new_zeros(T, B, C), x.new_zeros(T, B, P)
    else:
        act = gates
        c_raw = m = h_prev = x.new_empty(1)
    h_n, c_n = torch.empty_like(h0s), torch.empty_like(c0s)
    block_b = 16
    # bf16/fp16 training (fp32 activations to a separate cache) takes IEEE dots: with TF32 the
    # extra stores made ptxas spill 8-16 B at C 20 x P 12 (sm_80/sm_90); without TF32 nothing
    # spills. Their operands are bf16/fp16 weights and the fp32 h, so this only adds accuracy.
    split = act is not gates
    _lstm_proj_fwd_loop_kernel[(triton.cdiv(B, block_b),)](
        gates, act, sorted_len, w_rec, bias, w_proj, h0s, c0s, h_raw, c_raw, m, h_prev, h_n, c_n, T, B, C, P,
        float(cell_clip), float(proj_clip), HAS_CCLIP=cell_clip > 0, HAS_PCLIP=proj_clip > 0, REVERSE=bool(reverse),
        SAVE=bool(save_cache), SPLIT_ACT=split, IEEE=w_rec.dtype == torch.float32 or split, BLOCK_B=block_b,
        BLOCK_C=_pow2(C), BLOCK_P=_pow2(P),
        # 8 warps: with 4, the fp32 64 x 64 weights took all 255 registers and spilled ~160 B per
        # thread to local memory, and bf16/fp16 spilled 8 B; with 8 nothing spills and with 16 the
        # 128-register cap spills again (ptxas via `python -m elmo_fast.triton_check`, sm_90).
        num_warps=8)
    out = h_raw.clamp(-proj_clip, proj_clip) if proj_clip > 0 else h_raw
    out = out.transpose(0, 1).index_select(0, inv)
    h_n, c_n = h_n.index_select(0, inv), c_n.index_select(0, inv)
    if not save_cache:
        return (out, h_n, c_n, *(x.new_empty(0) for _ in range(5)))
    return out, h_n, c_n, act, c_raw, m, h_raw, h_prev


def _act_buffer(gates: torch.Tensor) -> torch.Tensor:
    """Where forward caches the gate activations: the pre-activation buffer itself, overwritten, when
    the state dtype is the model's; a separate fp32 buffer for bf16/fp16 models."""
    sdt = state_dtype(gates.dtype)
    return gates if sdt == gates.dtype else torch.zeros_like(gates, dtype=sdt)


def _acc(state: torch.dtype):
    """The step kernels' compute dtype for a state dtype."""
    return tl.float64 if state == torch.float64 else tl.float32


def _block(C: int) -> int:
    return min(1024, triton.next_power_of_2(max(C, 16)))


def _plan(lengths: torch.Tensor, T: int, device: torch.device):
    """Rows sorted by length (stable, descending): the active rows at any position are a prefix."""
    len_cpu = lengths.to("cpu", torch.long)
    sorted_len, order = torch.sort(len_cpu, descending=True, stable=True)
    active = [int((sorted_len > t).sum()) for t in range(T)]
    perm = order.to(device)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=device)
    return perm, inv, sorted_len.to(device), active


@on_device_of_first_arg
def lstm_proj_fwd(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse, save_cache, time_loop=None):
    """Same contract as torch.ops.elmo_fast.lstm_proj_fwd: (out, h_n, c_n, gates, c_raw, m, h_raw, h_prev).
    time_loop: the variant (`LstmPlan.kernel`); None: plan.uses_time_loop decides."""
    B, T, I = x.shape
    C4, P = w_rec.shape
    C = C4 // 4
    perm, inv, sorted_len, active = _plan(lengths, T, x.device)
    x, w_in, w_rec, bias, w_proj = (t.contiguous() for t in (x, w_in, w_rec, bias, w_proj))
    xs = x.index_select(0, perm).transpose(0, 1).contiguous()  # [T, B, I]
    gates = (xs.view(T * B, I) @ w_in.t()).view(T, B, C4)  # one GEMM for every step's input map
    if time_loop is None:
        time_loop = uses_time_loop(C, P, x.dtype)
    if time_loop and B > 0 and T > 0:
        return _fwd_time_loop(x, xs, gates, perm, inv, sorted_len, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip,
                              reverse, save_cache)
    h = h0.index_select(0, perm).contiguous()
    sdt = state_dtype(x.dtype)
    c = c0.index_select(0, perm).to(sdt).contiguous()
    h_raw = x.new_zeros(T, B, P)
    c_raw = x.new_zeros(T, B, C, dtype=sdt) if save_cache else x.new_empty(B, C, dtype=sdt)
    m = x.new_zeros(T, B, C) if save_cache else x.new_empty(B, C)
    h_prev = x.new_zeros(T, B, P) if save_cache else x.new_empty(0)
    act = _act_buffer(gates) if save_cache else gates
    block = _block(C)
    clip_t = torch.full((1,), cell_clip, dtype=sdt, device=x.device)
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = active[t]
        if n == 0:
            continue
        g = gates[t, :n]
        if save_cache:
            h_prev[t, :n] = h[:n]
        g.addmm_(h[:n], w_rec.t())
        craw_t = c_raw[t] if save_cache else c_raw
        m_t = (m[t] if save_cache else m)[:n]
        _lstm_proj_fwd_step_kernel[(n, triton.cdiv(C, block))](
            g, act[t, :n], bias, c, craw_t, m_t, C, clip_t, HAS_CLIP=cell_clip > 0, BLOCK_C=block, ACC=_acc(sdt))
        hr = h_raw[t, :n]
        torch.mm(m_t, w_proj.t(), out=hr)
        h[:n] = hr.clamp(-proj_clip, proj_clip) if proj_clip > 0 else hr
    out = h_raw.clamp(-proj_clip, proj_clip) if proj_clip > 0 else h_raw
    out = out.transpose(0, 1).index_select(0, inv)
    h_n, c_n = h.index_select(0, inv), c.index_select(0, inv).to(x.dtype)
    if not save_cache:
        return (out, h_n, c_n, *(x.new_empty(0) for _ in range(5)))
    return out, h_n, c_n, act, c_raw, m, h_raw, h_prev


@on_device_of_first_arg
def lstm_proj_bwd(grad_out, grad_hn, grad_cn, x, lengths, w_in, w_rec, w_proj, h0, c0, gates, c_raw, m, h_raw,
                  h_prev, cell_clip, proj_clip, reverse):
    """Same contract as torch.ops.elmo_fast.lstm_proj_bwd: (dx, dw_in, dw_rec, dbias, dw_proj, dh0, dc0)."""
    B, T, I = x.shape
    C4, P = w_rec.shape
    C = C4 // 4
    perm, inv, sorted_len, active = _plan(lengths, T, x.device)
    w_in, w_rec, w_proj = (t.contiguous() for t in (w_in, w_rec, w_proj))
    go = grad_out.index_select(0, perm).transpose(0, 1).contiguous()  # [T, B, P]
    sdt = state_dtype(x.dtype)
    if c_raw.dtype != sdt or gates.dtype != sdt:
        raise TypeError(f"lstm_proj backward: the cached gates/cell are {gates.dtype}/{c_raw.dtype}, expected {sdt} "
                        f"for {x.dtype} inputs; pass the cache that this version's forward returned")
    dh = grad_hn.index_select(0, perm).contiguous()
    dc = grad_cn.index_select(0, perm).to(sdt).contiguous()
    c0s = c0.index_select(0, perm).to(sdt).contiguous()
    dz = x.new_zeros(T, B, C4)
    dh_raw = x.new_zeros(T, B, P)
    block = _block(C)
    clip_t = torch.full((1,), cell_clip, dtype=sdt, device=x.device)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        n = active[t]
        if n == 0:
            continue
        dhr = dh_raw[t, :n]
        torch.add(go[t, :n], dh[:n], out=dhr)
        if proj_clip > 0:
            dhr.mul_(h_raw[t, :n].abs() <= proj_clip)
        dm = dhr @ w_proj
        if reverse:
            first = (sorted_len[:n] == t + 1).to(torch.int32)
            prev = c_raw[t + 1] if t + 1 < T else c0s
        else:
            first = torch.full((n,), int(t == 0), dtype=torch.int32, device=x.device)
            prev = c_raw[t - 1] if t > 0 else c0s
        _lstm_proj_bwd_step_kernel[(n, triton.cdiv(C, block))](
            gates[t], c_raw[t], prev, c0s, first, dm, dc, dz[t], C, clip_t,
            HAS_CLIP=cell_clip > 0, BLOCK_C=block, ACC=_acc(sdt))
        torch.mm(dz[t, :n], w_rec, out=dh[:n])
    dz2 = dz.view(T * B, C4)
    xs = x.index_select(0, perm).transpose(0, 1).contiguous()
    for t in range(T):  # padding may hold anything (even NaN); 0 * NaN would leak into dw_in
        xs[t, active[t]:] = 0
    xs = xs.view(T * B, I)
    dx = (dz2 @ w_in).view(T, B, I).transpose(0, 1).index_select(0, inv)
    dw_in = dz2.t() @ xs
    dbias = dz2.sum(0)
    dw_rec = dz2.t() @ h_prev.reshape(T * B, P)
    dw_proj = dh_raw.view(T * B, P).t() @ m.reshape(T * B, C)
    return dx, dw_in, dw_rec, dbias, dw_proj, dh.index_select(0, inv), dc.index_select(0, inv).to(x.dtype)
