"""The stacked bidirectional LSTM of ELMo, with AllenNLP's parameter names
(`forward_layer_{l}` / `backward_layer_{l}`, each with `input_linearity`, `state_linearity`,
`state_projection`) and its stateful semantics. Every direction of every layer runs through the
`lstm_proj` sequence op, so the backend is chosen in one place."""

from __future__ import annotations

import torch
from torch import nn

from .._backend import warn_if_bf16_emulated
from ..ops.lstm_proj import lstm_proj
from ..ops.lstm_proj.function import lstm_proj_pair
from ..ops.lstm_proj.plan import plan_lstm_proj


class LstmCellWithProjection(nn.Module):
    """One direction of one layer: input map (no bias), recurrent map (the bias), projection C -> P.

    The positional arguments are AllenNLP's, so a call written for its `LstmCellWithProjection`
    means the same here; `recurrent_dropout_probability` must be 0 (the fused kernels have no
    recurrent dropout, and ELMo's biLM does not use it). `backend` is keyword-only."""

    def __init__(self, input_size: int, hidden_size: int, cell_size: int, go_forward: bool = True,
                 recurrent_dropout_probability: float = 0.0, memory_cell_clip_value: float | None = None,
                 state_projection_clip_value: float | None = None, *, backend: str | None = None):
        super().__init__()
        _no_recurrent_dropout(recurrent_dropout_probability)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.cell_size = cell_size
        self.go_forward = go_forward
        self.memory_cell_clip_value = memory_cell_clip_value
        self.state_projection_clip_value = state_projection_clip_value
        self.backend = backend
        self.gemm_dtype: torch.dtype | None = None  # torch.bfloat16: faster CPU inference (see lstm_proj)
        self.input_linearity = nn.Linear(input_size, 4 * cell_size, bias=False)
        self.state_linearity = nn.Linear(hidden_size, 4 * cell_size, bias=True)
        self.state_projection = nn.Linear(cell_size, hidden_size, bias=False)
        with torch.no_grad():
            nn.init.zeros_(self.state_linearity.bias)
            self.state_linearity.bias[cell_size : 2 * cell_size].fill_(1.0)  # forget-gate bias

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_in `[4C, I]`, w_rec `[4C, P]`, bias `[4C]`, w_proj `[P, C]`), as `lstm_proj` takes them."""
        return (self.input_linearity.weight, self.state_linearity.weight, self.state_linearity.bias,
                self.state_projection.weight)

    def forward(self, inputs: torch.Tensor, batch_lengths, initial_state=None):
        """As AllenNLP's: inputs `[B, T, I]`, batch_lengths `[B]` (a list or a tensor; any order,
        where AllenNLP needs them sorted), initial_state (h `[1, B, P]`, c `[1, B, C]`) or None.

        Returns (outputs `[B, T, P]`, (h_n `[1, B, P]`, c_n `[1, B, C]`))."""
        out, (h, c) = self._run(inputs, batch_lengths, initial_state)
        return out, (h.unsqueeze(0), c.unsqueeze(0))

    def _run(self, inputs: torch.Tensor, lengths, initial_state=None):
        """`forward` with states `[B, H]` (also taken as `[1, B, H]`), the layout the stack uses."""
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths, dtype=torch.long)
        h0, c0 = initial_state if initial_state is not None else (None, None)
        if h0 is not None and h0.dim() == 3:
            h0, c0 = h0.squeeze(0), c0.squeeze(0)
        out, h, c = lstm_proj(
            inputs, lengths, *self.weights(), self.memory_cell_clip_value, self.state_projection_clip_value,
            reverse=not self.go_forward, h0=h0, c0=c0, backend=self.backend, gemm_dtype=self.gemm_dtype,
        )
        return out, (h, c)


def _no_recurrent_dropout(p: float) -> None:
    if p:
        raise ValueError(f"recurrent_dropout_probability={p} is not supported: the fused LSTM kernels have no "
                         "recurrent dropout (ELMo's biLM does not use it); pass 0.0")


def run_layer(fl: LstmCellWithProjection, bl: LstmCellWithProjection, f_in: torch.Tensor, b_in: torch.Tensor,
              lengths, f_state=None, b_state=None):
    """One layer's forward (`fl`) and reverse (`bl`) direction over `[B, T, I]` inputs: both at once,
    one thread each (`lstm_proj_pair`), where the layer's plan (`plan_lstm_proj`) says that pays, else one after the
    other. lengths: `[B]` for both, or a (forward, reverse) pair; states: (h, c) or None.

    Returns ((f_out, (h, c)), (b_out, (h, c)))."""
    same = (fl.backend, fl.gemm_dtype, fl.memory_cell_clip_value, fl.state_projection_clip_value) == (
        bl.backend, bl.gemm_dtype, bl.memory_cell_clip_value, bl.state_projection_clip_value)
    plan = same and plan_lstm_proj(f_in.device, f_in.dtype, fl.state_linearity.weight.shape, fl.state_projection.weight.shape,
                                   fl.backend, fl.gemm_dtype, directions=2)
    if plan and plan.pair:
        (f_out, fh, fc), (b_out, bh, bc) = lstm_proj_pair(
            f_in, b_in, lengths, fl.weights(), bl.weights(), fl.memory_cell_clip_value, fl.state_projection_clip_value,
            f_state, b_state, plan=plan)
        return (f_out, (fh, fc)), (b_out, (bh, bc))
    f_len, b_len = lengths if isinstance(lengths, (tuple, list)) else (lengths, lengths)
    return fl._run(f_in, f_len, f_state), bl._run(b_in, b_len, b_state)


class ElmoLstm(nn.Module):
    """Two separate stacks (forward, backward) with residual connections above the first layer.

    stateful=True keeps AllenNLP's semantics: the final (h, c) of every row, layer and direction
    become the next call's initial state until `reset_states()`; stateless runs start from zeros.
    The positional arguments are AllenNLP's (`recurrent_dropout_probability` must be 0);
    `stateful` and `backend` are keyword-only.
    """

    def __init__(self, input_size: int, hidden_size: int, cell_size: int, num_layers: int,
                 requires_grad: bool = False, recurrent_dropout_probability: float = 0.0,
                 memory_cell_clip_value: float | None = None, state_projection_clip_value: float | None = None,
                 *, stateful: bool = True, backend: str | None = None):
        super().__init__()
        _no_recurrent_dropout(recurrent_dropout_probability)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.cell_size = cell_size
        self.num_layers = num_layers
        self.stateful = stateful
        self._states: tuple[torch.Tensor, torch.Tensor] | None = None
        size = input_size
        for layer in range(num_layers):
            for name, forward in (("forward", True), ("backward", False)):
                self.add_module(f"{name}_layer_{layer}", LstmCellWithProjection(
                    size, hidden_size, cell_size, forward, 0.0, memory_cell_clip_value, state_projection_clip_value,
                    backend=backend))
            size = hidden_size
        for p in self.parameters():
            p.requires_grad_(requires_grad)

    @property
    def forward_layers(self) -> list[LstmCellWithProjection]:
        return [getattr(self, f"forward_layer_{k}") for k in range(self.num_layers)]

    @property
    def backward_layers(self) -> list[LstmCellWithProjection]:
        return [getattr(self, f"backward_layer_{k}") for k in range(self.num_layers)]

    def set_backend(self, backend: str | None) -> None:
        for layer in self.forward_layers + self.backward_layers:
            layer.backend = backend

    def set_gemm_dtype(self, dtype: torch.dtype | None) -> None:
        """torch.bfloat16: bf16 GEMM operands with fp32 state (CPU inference only); None: fp32."""
        if dtype is not None:
            warn_if_bf16_emulated()
        for layer in self.forward_layers + self.backward_layers:
            layer.gemm_dtype = dtype

    def reset_states(self, mask: torch.Tensor | None = None) -> None:
        """Forget the carried state (all rows, or only the rows where `mask` `[B]` is True)."""
        if mask is None:
            self._states = None
            return
        if self._states is None:
            return
        if mask.dim() != 1 or mask.shape[0] != self._states[0].shape[1]:
            raise ValueError(f"reset_states: the mask has shape {tuple(mask.shape)}, but {self._states[0].shape[1]} rows "
                             "of state are stored; pass one flag per stored row")
        keep = (~mask.bool()).to(self._states[0].dtype).view(1, -1, 1)
        self._states = tuple(s * keep[:, : s.shape[1]] for s in self._states)

    def _initial_states(self, batch_size: int, dtype: torch.dtype):
        if not self.stateful or self._states is None:
            return None
        h, c = self._states
        stored = h.shape[1]
        # states carried from a run in another precision (autocast, or the module cast since)
        h, c = h.to(dtype), c.to(dtype)
        if batch_size > stored:  # new rows start from zero
            h = torch.cat([h, h.new_zeros(h.shape[0], batch_size - stored, h.shape[2])], 1)
            c = torch.cat([c, c.new_zeros(c.shape[0], batch_size - stored, c.shape[2])], 1)
            self._states = (h, c)
        return h[:, :batch_size], c[:, :batch_size]

    def _update_states(self, h_n: torch.Tensor, c_n: torch.Tensor) -> None:
        h_n, c_n = h_n.detach(), c_n.detach()
        if self._states is None:
            self._states = (h_n, c_n)
            return
        # As AllenNLP: a row whose new first-layer state is all zero keeps its old state (h and c
        # are judged separately); rows beyond this batch keep theirs.
        new = []
        for old, fresh in zip(self._states, (h_n, c_n)):
            n = fresh.shape[1]
            used = (fresh[0].sum(-1) != 0.0).to(fresh.dtype).view(1, -1, 1)
            merged = old.to(fresh.dtype, copy=True)
            merged[:, :n] = fresh + old[:, :n] * (1 - used)
            new.append(merged)
        self._states = (new[0], new[1])

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """inputs `[B, T, I]`, mask `[B, T]` -> stacked layer outputs `[L, B, T, 2P]`."""
        B, T, _ = inputs.shape
        lengths = mask.sum(dim=1).to(torch.long)
        init = self._initial_states(B, inputs.dtype)
        P, C = self.hidden_size, self.cell_size
        fwd_in = bwd_in = inputs
        outputs, final_h, final_c = [], [], []
        for k, (fl, bl) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if init is not None:
                h, c = init[0][k], init[1][k]
                f_state, b_state = (h[:, :P], c[:, :C]), (h[:, P:], c[:, C:])
            else:
                f_state = b_state = None
            (f_out, (fh, fc)), (b_out, (bh, bc)) = run_layer(fl, bl, fwd_in, bwd_in, lengths, f_state, b_state)
            if k != 0:
                f_out = f_out + fwd_in
                b_out = b_out + bwd_in
            outputs.append(torch.cat([f_out, b_out], -1))
            final_h.append(torch.cat([fh, bh], -1))
            final_c.append(torch.cat([fc, bc], -1))
            fwd_in, bwd_in = f_out, b_out
        if self.stateful:
            self._update_states(torch.stack(final_h), torch.stack(final_c))
        return torch.stack(outputs)
