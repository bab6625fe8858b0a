#!/usr/bin/env python3
"""Checks a taper deploy bundle with HuggingFace `transformers` (on demand; CI checks the HF
layout in Rust, see `hf_export_runs_by_hf_names_in_the_reference_bert` in tests/ml_core.rs).

Usage: scripts/check_hf_bundle.py BUNDLE [TAPER]   (needs `pip install torch transformers`)

Loads BUNDLE with AutoModelForSequenceClassification and AutoTokenizer, scores a few
sentences, and compares the probabilities with `taper predict BUNDLE ...` (TAPER defaults to
target/release/taper). Exits 1 when a probability differs by more than 1e-4 or a label differs.
"""

import json
import subprocess
import sys

SENTENCES = [
    "a warm, funny film",
    "a tedious, overlong mess",
    "the plot is thin but the performances carry it",
]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    bundle = sys.argv[1]
    taper = sys.argv[2] if len(sys.argv) > 2 else "target/release/taper"

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(bundle).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    with torch.no_grad():
        encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
        probabilities = torch.softmax(model(**encoded).logits, dim=-1)
    theirs = [
        {model.config.id2label[i]: float(p) for i, p in enumerate(row)}
        for row in probabilities
    ]

    output = subprocess.run(
        [taper, "predict", bundle, *SENTENCES], check=True, capture_output=True, text=True
    ).stdout
    ours = [
        {item["label"]: item["score"] for item in json.loads(line)}
        for line in output.splitlines()
    ]

    worst = 0.0
    for sentence, a, b in zip(SENTENCES, ours, theirs):
        if a.keys() != b.keys():
            print(f"labels differ: {sorted(a)} vs {sorted(b)}")
            return 1
        diff = max(abs(a[label] - b[label]) for label in a)
        worst = max(worst, diff)
        print(f"{diff:.2e}  {sentence!r}: taper {a} transformers {b}")
    print(f"largest difference {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
