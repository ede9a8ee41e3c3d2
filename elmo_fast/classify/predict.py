"""`elmo-fast predict --model DIR --input CSV|TXT --output CSV`: label new text with a classifier
trained by `elmo-fast classify` (its `classifier.pt`, and the ELMo it names).

The input is read, labelled and written a chunk of documents at a time, so memory does not grow
with the file; the output appears under its name only when complete.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator

import torch

from ..utils import UsageError, atomic_path

CHUNK_DOCS = 2048


def load_classifier(model_dir, elmo=None, backend=None, device=None, log=print):
    """(head, bilm, state) of a `classify` output folder; `elmo` (a directory or published name)
    overrides the ELMo recorded in classifier.pt."""
    from .model import ElmoClassifierHead
    from .train import load_bilm

    path = os.path.join(os.fspath(model_dir), "classifier.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; --model is the --out folder of `elmo-fast classify`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle/zip errors of a damaged or foreign file)
        raise ValueError(f"{path} is not a classifier saved by `elmo-fast classify` ({type(e).__name__}); train one with it") from None
    if not isinstance(state, dict) or not {"config", "state_dict", "class_names"} <= set(state):
        raise ValueError(f"{path} is not a classifier saved by `elmo-fast classify`; train one with it")
    source = elmo if elmo is not None else state.get("elmo")
    if source is None:
        raise UsageError(f"{path} does not record the ELMo it was trained on (an older elmo-fast wrote it); "
                         "pass --elmo with the directory (or published name) given to `elmo-fast classify`")
    bilm = load_bilm(source, backend=backend, device=device)
    if state.get("bilm_options") is not None and bilm.options != state["bilm_options"]:
        raise ValueError(f"the ELMo {source} is not the one {path} was trained on (its options differ); "
                         "pass --elmo with the directory given to `elmo-fast classify`")
    cfg = state["config"]
    if (cfg["num_layers"], cfg["input_dim"]) != (bilm.num_layers, bilm.get_output_dim()):
        raise ValueError(f"the ELMo {source} has {bilm.num_layers} layers of {bilm.get_output_dim()}, but the classifier "
                         f"in {path} expects {cfg['num_layers']} of {cfg['input_dim']}; pass the ELMo it was trained on")
    if "bilm_state_dict" in state:  # fine-tuned together with the head
        bilm.load_state_dict(state["bilm_state_dict"])
    if state.get("bow"):
        log("predict: this classifier was trained with --bow; its bag-of-words part is not saved, so the labels "
            "come from the ELMo classifier alone")
    head = ElmoClassifierHead(**cfg)
    head.load_state_dict(state["state_dict"])
    head.to(next(bilm.parameters()).device).eval()
    return head, bilm, state


def read_documents(path) -> tuple[str, Iterator[tuple[int, str, str, int | None]]]:
    """('csv' | 'txt', an iterator of (1-based row, title, text, 0-based label or None)).

    A .csv is the classifier's layout (class index, title, description), or without the class
    column (title, description) or a single text column. Anything else is text, one document per line."""
    from .data import clean_text

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {path!r} does not exist (a CSV as for `elmo-fast classify`, or text, one document per line)")
    if os.path.isdir(path):
        raise IsADirectoryError(f"input {path!r} is a folder; pass a CSV or text file")

    def csv_rows():
        n_fields, labeled = None, False
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                for row_no, row in enumerate(csv.reader(f, strict=True), start=1):
                    if not row or not any(x.strip() for x in row):
                        raise ValueError(f"{path}: row {row_no} is empty; remove it (every row is one document)")
                    if n_fields is None:
                        n_fields = len(row)
                        labeled = n_fields >= 3 and row[0].strip().isdigit()
                    elif len(row) != n_fields:
                        raise ValueError(f"{path}: row {row_no} has {len(row)} fields but row 1 has {n_fields}; a quote may be unbalanced")
                    if labeled:
                        if not row[0].strip().isdigit() or int(row[0]) < 1:
                            raise ValueError(f"{path}: row {row_no}: class index {row[0][:30]!r} is not an integer >= 1 "
                                             "(row 1 has one, so every row needs one)")
                        yield row_no, clean_text(row[1]), clean_text(" ".join(row[2:])), int(row[0]) - 1
                    elif n_fields == 1:
                        yield row_no, "", clean_text(row[0]), None
                    else:
                        yield row_no, clean_text(row[0]), clean_text(" ".join(row[1:])), None
        except csv.Error as e:
            raise ValueError(f"{path}: not valid CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None

    def txt_rows():
        try:
            with open(path, encoding="utf-8-sig") as f:
                for line_no, line in enumerate(f, start=1):
                    text = clean_text(line)
                    if not text:
                        raise ValueError(f"{path}: line {line_no} is blank; remove it (every line is one document)")
                    yield line_no, "", text, None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None

    kind = "csv" if path.lower().endswith(".csv") else "txt"
    return kind, (csv_rows() if kind == "csv" else txt_rows())


def _chunks(it, n):
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def predict_file(model_dir, input_path, output_path, *, elmo=None, max_tokens=None, backend=None, device=None,
                 chunk_docs: int = CHUNK_DOCS, progress: bool = True, log=print) -> dict:
    """Label every document of `input_path` and write `output_path` (CSV: row, predicted, confidence,
    true when the input has labels, then one probability column per class).

    The labels come exactly as `classify` computes them for its test set: the frozen ELMo's fp16
    layer cache (or the fine-tuned biLM run directly), then the head. Returns {'n', 'accuracy' (when
    labelled), 'output'}."""
    from tqdm.auto import tqdm

    from ..utils import check_output_dir
    from .features import compute_layers, tokenize_documents
    from .finetune import predict_documents
    from .train import predict

    output_path = os.fspath(output_path)
    folder = os.path.dirname(os.path.abspath(output_path))
    if os.path.isdir(output_path):
        raise IsADirectoryError(f"--output {output_path!r} is a folder; give a file name such as {os.path.join(output_path, 'predictions.csv')}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the output folder {folder} does not exist; create it first (mkdir -p {folder})")
    check_output_dir(folder)
    kind, rows = read_documents(input_path)
    head, bilm, state = load_classifier(model_dir, elmo=elmo, backend=backend, device=device, log=log)
    names = list(state["class_names"])
    max_tokens = max_tokens if max_tokens is not None else state.get("max_tokens", 200)
    finetuned = "bilm_state_dict" in state
    n, correct, labeled = 0, 0, None
    with atomic_path(output_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f, \
            tqdm(desc="predict", unit="doc", disable=not progress, leave=False) as bar:
        w = csv.writer(f)
        for chunk in _chunks(rows, chunk_docs):
            if labeled is None:
                labeled = chunk[0][3] is not None
                w.writerow(["row", "predicted", "confidence", *(["true"] if labeled else []), *(f"p_{c}" for c in names)])
            docs = tokenize_documents([c[1] for c in chunk], [c[2] for c in chunk], max_tokens, progress=False)
            if finetuned:
                probs = predict_documents(bilm, head, docs)
            else:
                probs = predict(head, compute_layers(bilm, docs, progress=False))
            for (row_no, _, _, y), p in zip(chunk, probs):
                k = int(p.argmax())
                extra = []
                if labeled:
                    if y >= len(names):
                        raise ValueError(f"{input_path}: row {row_no}: class index {y + 1} is outside the classifier's "
                                         f"1..{len(names)} ({', '.join(names)})")
                    extra = [names[y]]
                    correct += int(y == k)
                w.writerow([row_no, names[k], f"{p[k]:.4f}", *extra, *(f"{v:.6f}" for v in p)])
            n += len(chunk)
            bar.update(len(chunk))
        if n == 0:
            raise ValueError(f"{input_path} has no documents")
    out = {"n": n, "output": output_path, "input_kind": kind}
    if labeled:
        out["accuracy"] = correct / n
    return out


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="label new text with a classifier trained by `elmo-fast classify`",
                              description="Label every document of a CSV (as for classify: class index, title, description; "
                              "or title, description; or one text column) or a text file (one document per line) with the "
                              "classifier in --model (the --out folder of `elmo-fast classify`).")
    p.add_argument("--model", required=True, help="the --out folder of `elmo-fast classify` (holds classifier.pt)")
    p.add_argument("--input", required=True, help="CSV, or text with one document per line")
    p.add_argument("--output", required=True, help="CSV to write: row, predicted, confidence, [true], p_<class>...")
    p.add_argument("--elmo", default=None, help="the ELMo directory or published name (default: the one classify recorded)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens kept per document (default: as in training)")
    p.add_argument("--backend", default=None, help="kernel backend (torch|cpp|triton|cuda; default: fastest)")
    p.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..utils import resolve_device

    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be an integer >= 1, got {args.max_tokens}")
    device = resolve_device(args.device)
    r = predict_file(args.model, args.input, args.output, elmo=args.elmo, max_tokens=args.max_tokens, backend=args.backend,
                     device=device, progress=not args.no_progress)
    acc = f"; accuracy {r['accuracy']:.4f} against the input's labels" if "accuracy" in r else ""
    print(f"labelled {r['n']} documents: {r['output']}{acc}")
    return 0
