"""Fine-tuning the biLM together with the classifier head (AllenNLP's `Elmo(requires_grad=True)`).

The frozen pipeline runs the biLM once per document and trains the head on the cached layers. Fine-
tuning cannot cache: every step runs the biLM forward and backward through the fused kernels on the
documents of the batch. It starts from the head trained on the frozen features (so the new biLM
gradients are not driven by a random head), uses a smaller learning rate for the biLM than for the
head, and keeps the epoch with the lowest validation loss -- the frozen starting point included, so
fine-tuning can only replace it when validation says it helps.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from ..chars import batch_to_ids

Document = list[list[str]]


def document_layers(bilm, docs: list[Document], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the biLM over the sentences of `docs` (with autograd when its weights require it) and pack
    each document's tokens in order: layers `[L, B, T, 2P]`, mask `[B, T]`. The layout equals
    `LayerCache.batch` (boundaries removed, an empty document is one all-zero position)."""
    device = device or next(bilm.parameters()).device
    sents = [s for doc in docs for s in doc]
    L, D = bilm.num_layers, bilm.get_output_dim()
    if sents:
        acts = torch.stack(bilm(batch_to_ids(sents).to(device))["activations"], 0)  # [L, S, T+2, D]
        S, T2 = acts.shape[1], acts.shape[2]
        # Token t of sentence s sits at position t + 1 (after <S>); one zero row serves as padding.
        flat = torch.cat([acts.reshape(L, S * T2, D), acts.new_zeros(L, 1, D)], 1)
        pad = S * T2
    else:
        flat, pad, T2 = torch.zeros(L, 1, D, device=device), 0, 0
    rows, k = [], 0
    for doc in docs:
        r = []
        for s in doc:
            r.extend(k * T2 + 1 + t for t in range(len(s)))
            k += 1
        rows.append(r or [pad])
    T = max(len(r) for r in rows)
    index = torch.full((len(docs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(docs), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        index[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = True
    return flat[:, index.to(flat.device)], mask.to(flat.device)


@torch.no_grad()
def predict_documents(bilm, head, docs: list[Document], batch_size: int = 64) -> np.ndarray:
    """Class probabilities `[N, K]` with the biLM run on the fly (no cache)."""
    bilm.eval()
    head.eval()
    order = np.argsort([sum(map(len, d)) for d in docs], kind="stable")
    out = np.zeros((len(docs), head.config["num_classes"]), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        layers, mask = document_layers(bilm, [docs[j] for j in idx])
        out[idx] = torch.softmax(head(layers, mask).float(), -1).cpu().numpy()
    return out


def finetune(bilm, head, train_docs: list[Document], y_train: np.ndarray, valid_docs: list[Document], y_valid: np.ndarray,
             *, epochs: int = 3, lr_bilm: float = 1e-4, lr_head: float = 5e-4, weight_decay: float = 1e-2,
             batch_size: int = 16, patience: int = 2, seed: int = 0, progress: bool = True, log=print) -> dict:
    """Train `bilm` and `head` jointly (in place); both end with the weights of the best epoch.

    Returns {'epochs', 'best_epoch' (0 = the frozen start was kept), 'valid_loss', 'valid_accuracy',
    'history', 'seconds', 'tokens_per_s'}.
    """
    from tqdm.auto import tqdm

    from .report import log_loss as _log_loss

    if len(train_docs) != len(y_train) or len(valid_docs) != len(y_valid):
        raise ValueError("documents and labels differ in length")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    start = time.perf_counter()
    bilm_params = [p for p in bilm.parameters() if p.is_floating_point()]
    for p in bilm_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": bilm_params, "lr": lr_bilm, "weight_decay": 0.0},
                             {"params": list(head.parameters()), "lr": lr_head, "weight_decay": weight_decay}])
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    y_train_t = torch.as_tensor(y_train, dtype=torch.long)
    device = next(head.parameters()).device

    def evaluate():
        p = predict_documents(bilm, head, valid_docs)
        return _log_loss(p, y_valid), float((p.argmax(1) == y_valid).mean())

    best_loss, best_acc = evaluate()
    best_epoch, best_state = 0, (copy.deepcopy(bilm.state_dict()), copy.deepcopy(head.state_dict()))
    history = [{"epoch": 0, "valid_loss": best_loss, "valid_accuracy": best_acc}]
    log(f"fine-tuning: frozen start valid loss {best_loss:.4f}, accuracy {best_acc:.4f}")
    n_tok = 0
    try:
        for epoch in range(1, epochs + 1):
            bilm.train()
            head.train()
            total = 0.0
            order = rng.permutation(len(train_docs))
            bar = tqdm(range(0, len(order), batch_size), desc=f"fine-tune {epoch}/{epochs}", unit="batch",
                       disable=not progress, leave=False)
            for i in bar:
                idx = order[i : i + batch_size]
                docs = [train_docs[j] for j in idx]
                layers, mask = document_layers(bilm, docs)
                loss = loss_fn(head(layers, mask).float(), y_train_t[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(bilm_params + list(head.parameters()), 5.0)
                opt.step()
                total += loss.item() * len(idx)
                n_tok += int(mask.sum())
                bar.set_postfix(loss=f"{loss.item():.3f}")
            vloss, vacc = evaluate()
            history.append({"epoch": epoch, "train_loss": total / len(train_docs), "valid_loss": vloss, "valid_accuracy": vacc})
            log(f"fine-tuning epoch {epoch}: train loss {total / len(train_docs):.4f}, valid loss {vloss:.4f}, accuracy {vacc:.4f}")
            if vloss < best_loss:
                best_loss, best_acc, best_epoch = vloss, vacc, epoch
                best_state = (copy.deepcopy(bilm.state_dict()), copy.deepcopy(head.state_dict()))
            elif epoch - best_epoch >= patience:
                break
    finally:
        bilm.load_state_dict(best_state[0])
        head.load_state_dict(best_state[1])
        for p in bilm_params:
            p.requires_grad_(False)
        bilm.eval()
    seconds = time.perf_counter() - start
    log(f"fine-tuning: epoch {best_epoch} kept (valid loss {best_loss:.4f}, accuracy {best_acc:.4f}), {seconds:.0f} s")
    return {"epochs": len(history) - 1, "best_epoch": best_epoch, "valid_loss": best_loss, "valid_accuracy": best_acc,
            "history": history, "seconds": seconds, "train_tokens_per_s": n_tok / max(seconds, 1e-9)}
