"""PyTorch side of the comparison: the same MiniLM-L6 shape (random weights), same batches.

Writes {figure: seconds} as JSON with the figure names benches/ml_step.rs uses.
"""
import argparse, json, statistics, time

import torch
from transformers import BertConfig, BertForSequenceClassification
from peft import LoraConfig, get_peft_model

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--json", required=True)
p.add_argument("--repeats", type=int, default=7)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512,
                    type_vocab_size=2, num_labels=2)


def batch(size, tokens, seed):
    ids = torch.tensor([[1000 + ((i * 7919 + t * 104729 + seed) % 20000) for t in range(tokens)]
                        for i in range(size)])
    return ids, torch.ones_like(ids), torch.tensor([i % 2 for i in range(size)])


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


results = {}
for method in ["full", "lora"]:
    for tokens in [64, 128]:
        model = BertForSequenceClassification(config)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                     target_modules=["query", "value"]))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
        ids, mask, labels = batch(16, tokens, 1)

        def step():
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad()

        results[f"train_{method}_{tokens}"] = timed(step, args.repeats)

model = BertForSequenceClassification(config).eval()
with torch.inference_mode():
    for tokens in [64, 128]:
        ids, mask, _ = batch(32, tokens, 2)
        results[f"infer_32_{tokens}"] = timed(lambda: model(input_ids=ids, attention_mask=mask),
                                              args.repeats)
    ids, mask, _ = batch(1, 22, 3)
    times = []
    for _ in range(100):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    results["latency_p50"] = statistics.median(times)
with open(args.json, "w") as f:
    json.dump(results, f, indent=1)
print(json.dumps(results, indent=1))
