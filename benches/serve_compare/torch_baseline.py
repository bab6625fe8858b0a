"""PyTorch + transformers baseline for `taper serve`'s throughput (issue 10, docs/benchmarks.md).

Scores the sentences of a JSON-lines file (`{"text": ...}` per line, the quickstart's test split)
with the deploy bundle loaded by `AutoModelForSequenceClassification.from_pretrained`, in batches
of `--batch` sentences in file order, each padded to its own longest sentence (dynamic padding,
what a `DataCollatorWithPadding` does), for at least `--seconds`, and prints sentences/s. With
`--int8`, the model is first converted with `torch.ao.quantization.quantize_dynamic` (int8
linear layers), PyTorch's own CPU quantization.
"""
import argparse, json, time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--bundle", required=True)
p.add_argument("--input", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--seconds", type=float, default=30)
p.add_argument("--int8", action="store_true")
args = p.parse_args()
torch.set_num_threads(args.threads)

texts = [json.loads(line)["text"] for line in open(args.input) if line.strip()]
tokenizer = AutoTokenizer.from_pretrained(args.bundle)
model = AutoModelForSequenceClassification.from_pretrained(args.bundle).eval()
if args.int8:
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
max_length = json.load(open(f"{args.bundle}/manifest.json"))["max_length"]
batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]


def score(batch):
    encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    return model(**encoded).logits


with torch.inference_mode():
    score(batches[0])  # warm-up
    scored, start, elapsed, next_batch = 0, time.perf_counter(), 0.0, 0
    while elapsed < args.seconds:
        batch = batches[next_batch % len(batches)]
        score(batch)
        scored += len(batch)
        next_batch += 1
        elapsed = time.perf_counter() - start
print(json.dumps({"side": "torch-int8" if args.int8 else "torch-f32", "threads": args.threads,
                  "batch": args.batch, "sentences": scored, "seconds": round(elapsed, 2),
                  "sentences_per_s": round(scored / elapsed, 1)}))
