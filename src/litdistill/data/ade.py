"""The raw ADE corpus (Gurulingappa et al., 2012) as sentence classification.

``DRUG-AE.rel`` lists one line per drug-effect pair (a sentence repeats once per pair);
``ADE-NEG.txt`` lists sentences with no adverse effect. A sentence in both counts as positive.
Splits are made over unique sentences, so no sentence is in two splits.
"""

from __future__ import annotations

import random
from pathlib import Path

from litdistill.core.io import atomic_write_csv


def read_ade_corpus(corpus_dir: str) -> list[tuple[str, int]]:
    """Unique (sentence, label) pairs, in a stable order."""
    root = Path(corpus_dir)
    positive_file, negative_file = root / "DRUG-AE.rel", root / "ADE-NEG.txt"
    for f in (positive_file, negative_file):
        if not f.is_file():
            raise FileNotFoundError(
                f"ADE corpus file {f} not found; data.corpus_dir must hold DRUG-AE.rel and ADE-NEG.txt"
            )
    labels: dict[str, int] = {}
    for line in negative_file.read_text(encoding="utf-8").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] == "NEG":
            labels.setdefault(parts[2].strip(), 0)
    for line in positive_file.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) >= 2:
            labels[parts[1].strip()] = 1
    return sorted(labels.items())


def prepare_ade_splits(
    corpus_dir: str,
    out_dir: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 13,
    max_examples: int | None = None,
) -> dict[str, str]:
    """Write de-duplicated train/validation/test CSVs of the raw corpus; returns split -> path."""
    rows = read_ade_corpus(corpus_dir)
    random.Random(seed).shuffle(rows)
    if max_examples:
        rows = rows[:max_examples]
    n_val, n_test = int(len(rows) * val_fraction), int(len(rows) * test_fraction)
    parts = {"test": rows[:n_test], "validation": rows[n_test : n_test + n_val], "train": rows[n_test + n_val :]}
    return {
        split: str(atomic_write_csv(Path(out_dir) / f"{split}.csv", ["text", "label"], part))
        for split, part in parts.items()
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m litdistill.data.ade --out DIR``: write the splits, e.g. for an LLM to label them."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--corpus-dir", default="../shared/data/ade_corpus_v2", help="holds DRUG-AE.rel and ADE-NEG.txt"
    )
    parser.add_argument("--out", required=True, help="where train.csv, validation.csv and test.csv go")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--max-examples", type=int, default=None)
    args = parser.parse_args(argv)
    paths = prepare_ade_splits(
        args.corpus_dir, args.out, args.val_fraction, args.test_fraction, args.seed, args.max_examples
    )
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
