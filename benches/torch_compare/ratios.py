"""Prints taper/torch time ratios (below 1.0: taper is faster)."""
import json, sys

ours, theirs = (json.load(open(path)) for path in sys.argv[1:3])
print("| figure | taper s | torch s | taper/torch time |")
print("|---|---|---|---|")
for key in sorted(set(ours) & set(theirs)):
    print(f"| {key} | {ours[key]:.4f} | {theirs[key]:.4f} | {ours[key] / theirs[key]:.2f} |")
