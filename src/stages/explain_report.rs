//! `report.html` of the `explain` stage: one self-contained page (inline CSS, no scripts, no
//! external resources) that opens from the store or a CI artifact. All text from the data is
//! HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::model::stages::Explain;
use crate::stages::explain::ExplainedExample;

/// Words listed per class.
const TOP_WORDS: usize = 10;

pub fn render_report(
    examples: &[ExplainedExample],
    labels: &[String],
    settings: &Explain,
    metrics: &BTreeMap<String, f64>,
) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>taper explain</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}\
         table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}\
         .ex{margin:1rem 0;padding:.5rem;border:1px solid #ddd;border-radius:4px}\
         .wrong{border-color:#c33}.w{padding:0 .1rem;border-radius:2px}.meta{color:#555;font-size:.9rem}\
         </style></head><body>\n",
    );
    let method = serde_json::to_value(settings.method)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = writeln!(
        html,
        "<h1>Explanations</h1><p class=\"meta\">{} examples of the <code>{}</code> split, \
         method <code>{}</code>. Green words raise the predicted class's probability, red \
         words lower it.</p>",
        examples.len(),
        settings.split.as_str(),
        escape(&method),
    );
    html.push_str(&metrics_table(metrics));
    html.push_str(&top_words(examples, labels));
    html.push_str(
        "<h2>Examples</h2><p class=\"meta\">Misclassified first, then the least confident.</p>\n",
    );
    let mut order: Vec<&ExplainedExample> = examples.iter().collect();
    order.sort_by(|a, b| {
        let wrong = |e: &ExplainedExample| e.label != e.explanation.prediction;
        wrong(b)
            .cmp(&wrong(a))
            .then(
                a.explanation
                    .probability
                    .total_cmp(&b.explanation.probability),
            )
            .then(a.index.cmp(&b.index))
    });
    for example in order {
        html.push_str(&example_block(example));
    }
    html.push_str("</body></html>\n");
    html
}

fn metrics_table(metrics: &BTreeMap<String, f64>) -> String {
    let mut html = String::from(
        "<h2>Can these attributions be trusted?</h2><table><tr><th>metric</th><th>value</th>\
         <th>random words</th><th>reads</th></tr>\n",
    );
    if let Some(gap) = metrics.get("completeness_gap") {
        let _ = writeln!(
            html,
            "<tr><td>completeness gap</td><td>{:.2}%</td><td></td><td>how far the scores \
             miss p(x) − p(baseline); raise <code>steps</code> if large</td></tr>",
            gap * 100.0
        );
    }
    for (name, reads) in [
        (
            "comprehensiveness",
            "probability drop without the top words: higher than random is good",
        ),
        (
            "sufficiency",
            "probability drop with only the top words: lower than random is good",
        ),
    ] {
        if let (Some(value), Some(random)) =
            (metrics.get(name), metrics.get(&format!("{name}_random")))
        {
            let _ = writeln!(
                html,
                "<tr><td>{name}</td><td>{value:.3}</td><td>{random:.3}</td><td>{reads}</td></tr>"
            );
        }
    }
    html.push_str("</table>\n");
    html
}

/// Per predicted class, the words (lowercased) with the largest mean score.
fn top_words(examples: &[ExplainedExample], labels: &[String]) -> String {
    let mut html = String::from("<h2>Top words per predicted class</h2>\n");
    for label in labels {
        let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for example in examples
            .iter()
            .filter(|e| &e.explanation.prediction == label)
        {
            for (word, score) in example
                .explanation
                .words
                .iter()
                .zip(&example.explanation.scores)
            {
                let entry = sums.entry(word.to_lowercase()).or_default();
                entry.0 += f64::from(*score);
                entry.1 += 1;
            }
        }
        if sums.is_empty() {
            continue;
        }
        let mut means: Vec<(String, f64, usize)> = sums
            .into_iter()
            .map(|(word, (sum, count))| (word, sum / count as f64, count))
            .collect();
        means.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let _ = writeln!(
            html,
            "<h3>{}</h3><table><tr><th>word</th><th>mean score</th><th>occurrences</th></tr>",
            escape(label)
        );
        for (word, mean, count) in means.into_iter().take(TOP_WORDS) {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{mean:+.4}</td><td>{count}</td></tr>",
                escape(&word)
            );
        }
        html.push_str("</table>\n");
    }
    html
}

fn example_block(example: &ExplainedExample) -> String {
    let explanation = &example.explanation;
    let wrong = example.label != explanation.prediction;
    let scale = explanation
        .scores
        .iter()
        .fold(0f32, |max, score| max.max(score.abs()))
        .max(f32::MIN_POSITIVE);
    let mut html = format!(
        "<div class=\"ex{}\"><p class=\"meta\">#{} · label <b>{}</b> · predicted <b>{}</b> \
         ({:.3}){}{}</p><p>",
        if wrong { " wrong" } else { "" },
        example.index,
        escape(&example.label),
        escape(&explanation.prediction),
        explanation.probability,
        if wrong { " · misclassified" } else { "" },
        explanation
            .completeness_gap
            .map(|gap| format!(" · completeness gap {:.2}%", gap * 100.0))
            .unwrap_or_default(),
    );
    for (word, score) in explanation.words.iter().zip(&explanation.scores) {
        let alpha = (score.abs() / scale).clamp(0.0, 1.0) * 0.8;
        let rgb = if *score >= 0.0 {
            "40,160,60"
        } else {
            "210,50,50"
        };
        let _ = write!(
            html,
            "<span class=\"w\" style=\"background:rgba({rgb},{alpha:.2})\" title=\"{score:+.4}\">{}</span> ",
            escape(word)
        );
    }
    html.push_str("</p></div>\n");
    html
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<b>\"it's\" & more</b>"),
            "&lt;b&gt;&quot;it&#39;s&quot; &amp; more&lt;/b&gt;"
        );
    }
}
