"""Render the metrics.json of an evaluate stage as report.html.

Usage: python3 report.py out/<pipeline file stem>/<evaluate stage>/metrics.json (the quickstart
passes out/quickstart/test/metrics.json). Standard library only, so the quickstart needs nothing
but python3 beyond taper itself.
"""
import html
import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    metrics = json.load(f)

labels = metrics["labels"]
rows = "".join(
    f"<tr><td>{html.escape(c['label'])}</td><td>{c['precision']:.3f}</td>"
    f"<td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
    for c in metrics["per_class"]
)
confusion = "".join(
    "<tr><th>" + html.escape(labels[i]) + "</th>"
    + "".join(f"<td>{n}</td>" for n in row) + "</tr>"
    for i, row in enumerate(metrics["confusion"])
)
headline = "".join(
    f"<li>{name}: {metrics[name]:.4f}</li>"
    for name in ["accuracy", "macro_f1", "roc_auc", "log_loss", "expected_calibration_error"]
    if name in metrics
)
page = f"""<!doctype html>
<meta charset="utf-8"><title>quickstart report</title>
<h1>Rotten Tomatoes: {metrics['examples']} {html.escape(metrics['split'])} snippets</h1>
<ul>{headline}</ul>
<h2>Per class</h2>
<table border="1"><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>
<h2>Confusion (rows: true, columns: predicted)</h2>
<table border="1"><tr><th></th>{''.join(f'<th>{html.escape(l)}</th>' for l in labels)}</tr>{confusion}</table>
"""
with open("report.html", "w", encoding="utf-8") as f:
    f.write(page)
