//! The text a pipeline was read from, and byte spans into it.
//!
//! A [`Source`] is the pipeline file followed by one segment per `-S` override, all in one
//! buffer. Every [`Span`] is a byte range into that buffer, so a value that came from an
//! override carries an ordinary span, and a diagnostic about it renders the override text
//! (named `-S override`) instead of pointing at an unrelated line of the file.

use std::sync::Arc;

use miette::{MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// A byte range into a [`Source`]; `start == end` marks a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start,
            end: end.max(start),
        }
    }
}

impl From<Span> for SourceSpan {
    fn from(span: Span) -> SourceSpan {
        SourceSpan::new(span.start.into(), span.end - span.start)
    }
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

#[derive(Debug, Clone)]
struct Segment {
    name: String,
    start: usize,
    end: usize,
}

/// The pipeline file's text plus the override segments; implements [`SourceCode`].
#[derive(Debug, Clone)]
pub struct Source {
    text: Arc<str>,
    segments: Arc<[Segment]>,
}

impl Source {
    /// `name` is the file name shown in diagnostics; each extra segment is `(name, text)`.
    pub fn new(name: &str, file_text: &str, extra: &[(String, String)]) -> Source {
        let mut text = String::with_capacity(file_text.len() + 64);
        let mut segments = Vec::with_capacity(1 + extra.len());
        text.push_str(file_text);
        segments.push(Segment {
            name: name.to_owned(),
            start: 0,
            end: file_text.len(),
        });
        for (segment_name, segment_text) in extra {
            // A newline between segments keeps a segment's line numbers independent of the
            // previous one's last line.
            text.push('\n');
            let start = text.len();
            text.push_str(segment_text);
            segments.push(Segment {
                name: segment_name.clone(),
                start,
                end: text.len(),
            });
        }
        Source {
            text: Arc::from(text),
            segments: Arc::from(segments),
        }
    }

    /// The pipeline file's name as given.
    pub fn name(&self) -> &str {
        &self.segments[0].name
    }

    /// The pipeline file's text (without override segments).
    pub fn file_text(&self) -> &str {
        &self.text[..self.segments[0].end]
    }

    /// Where extra segment `index` (0-based, in the order given to [`Source::new`]) starts.
    pub fn segment_start(&self, index: usize) -> Option<usize> {
        self.segments.get(index + 1).map(|segment| segment.start)
    }

    /// The text of a span (empty when out of range).
    pub fn slice(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or("")
    }

    /// 1-based line and column (in characters) of a byte offset, for messages and tests.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let segment = self.segment_of(offset);
        let text = &self.text[segment.start..segment.end];
        let local = offset.saturating_sub(segment.start).min(text.len());
        let before = &text[..floor_char_boundary(text, local)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn segment_of(&self, offset: usize) -> &Segment {
        self.segments
            .iter()
            .rev()
            .find(|segment| segment.start <= offset)
            .unwrap_or(&self.segments[0])
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

impl SourceCode for Source {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let segment = self.segment_of(span.offset());
        let text = &self.text[segment.start..segment.end];
        let local = SourceSpan::new(
            (span.offset().saturating_sub(segment.start).min(text.len())).into(),
            span.len()
                .min(text.len().saturating_sub(span.offset() - segment.start)),
        );
        let contents = text.read_span(&local, context_lines_before, context_lines_after)?;
        Ok(Box::new(MietteSpanContents::new_named(
            segment.name.clone(),
            contents.data(),
            SourceSpan::new(
                (contents.span().offset() + segment.start).into(),
                contents.span().len(),
            ),
            contents.line(),
            contents.column(),
            contents.line_count(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_characters_not_bytes() {
        let source = Source::new("p.yaml", "a: é\nbé: x\n", &[]);
        let offset = source.file_text().find('x').expect("x is in the text");
        assert_eq!(offset, 11);
        assert_eq!(source.line_column(offset), (2, 5));
    }

    #[test]
    fn override_segments_restart_line_numbers() {
        let source = Source::new(
            "p.yaml",
            "a: 1\nb: 2\n",
            &[("-S override".to_owned(), "s.k=v".to_owned())],
        );
        let start = source.segment_start(0).expect("one segment");
        assert_eq!(source.slice(Span::new(start, start + 5)), "s.k=v");
        assert_eq!(source.line_column(start + 4), (1, 5));
        let contents = source
            .read_span(&Span::new(start + 4, start + 5).into(), 0, 0)
            .expect("span in range");
        assert_eq!(contents.name(), Some("-S override"));
        assert_eq!(contents.line(), 0);
    }
}
