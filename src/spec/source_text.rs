//! The text a pipeline was read from, and byte spans into it.
//!
//! A [`SourceText`] is the pipeline file followed by one segment per `-S` override, all in one
//! buffer. Every [`Span`] is a byte range into that buffer, so a value that came from an
//! override carries an ordinary span, and a diagnostic about it renders the override text
//! (named `-S override`) instead of pointing at an unrelated line of the file.

use std::sync::Arc;

use miette::{MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// A byte range into a [`SourceText`]; `start == end` marks a position.
///
/// Offsets are `u32`: a source is at most an 8 MiB file plus its overrides and specs, and
/// every node, key and stage of a validated file carries spans (8 bytes each instead of 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Offsets past `u32::MAX` (no source gets near) are clamped rather than wrapped.
    pub fn new(start: usize, end: usize) -> Span {
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX);
        Span {
            start: offset(start),
            end: offset(end.max(start)),
        }
    }

    pub fn start(self) -> usize {
        self.start as usize
    }

    pub fn end(self) -> usize {
        self.end as usize
    }
}

impl From<Span> for SourceSpan {
    fn from(span: Span) -> SourceSpan {
        SourceSpan::new(span.start().into(), span.end() - span.start())
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

/// Lines longer than this (in bytes) are shown as a window around the span instead of whole:
/// miette pads a label to its column with `format!("{:width$}")`, whose width is a `u16`, so a
/// label past visual column 65,535 (a long one-line `run:`, tabs count 4) panicked, and a line
/// of megabytes would be printed in full for every error on it.
const LONG_LINE: usize = 1024;

/// Bytes of a long line shown before a span's start, and at most in all (4,096 visual columns
/// even if every byte is a tab, far from the `u16` limit).
const WINDOW_BEFORE: usize = 80;
const WINDOW: usize = 1024;

/// The pipeline file's text plus the override segments; implements [`SourceCode`].
#[derive(Debug, Clone)]
pub struct SourceText {
    /// One pointer: a `SourceText` travels inside every `LoadError`.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    text: String,
    segments: Vec<Segment>,
    /// Byte offset where each line starts (after `\n`, `\r\n` or a lone `\r`, as miette and
    /// YAML count lines). Built once: finding the line of an offset by scanning from the start
    /// of the text made rendering 20,000 errors take a minute (one scan per label).
    line_starts: Vec<usize>,
}

impl SourceText {
    /// `name` is the file name shown in diagnostics; each extra segment is `(name, text)`.
    /// A `String` given as `file_text` becomes the buffer, not copied: the file's text is
    /// the largest thing a pipeline of a few values holds.
    pub fn new(name: &str, file_text: impl Into<String>, extra: &[(String, String)]) -> SourceText {
        let mut text: String = file_text.into();
        let file_end = text.len();
        let mut segments = Vec::with_capacity(1 + extra.len());
        segments.push(Segment {
            name: name.to_owned(),
            start: 0,
            end: file_end,
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
        SourceText {
            inner: Arc::new(Inner {
                line_starts: line_starts(&text),
                text,
                segments,
            }),
        }
    }

    /// Appends a segment (a spec file a pipeline `use:`s) and returns where it starts. Spans
    /// into the existing segments stay valid: segments only ever grow at the end.
    pub fn push_segment(&mut self, name: &str, segment_text: &str) -> usize {
        let mut text = String::with_capacity(self.inner.text.len() + 1 + segment_text.len());
        text.push_str(&self.inner.text);
        text.push('\n');
        let start = text.len();
        text.push_str(segment_text);
        let mut segments = self.inner.segments.clone();
        segments.push(Segment {
            name: name.to_owned(),
            start,
            end: text.len(),
        });
        self.inner = Arc::new(Inner {
            line_starts: line_starts(&text),
            text,
            segments,
        });
        start
    }

    /// `file:line` of byte `offset`, the file being its segment's name.
    pub fn location(&self, offset: usize) -> String {
        format!("{}:{}", self.segment_name(offset), self.line(offset))
    }

    /// The name of the segment holding byte `offset` (the pipeline, an override, a spec).
    pub fn segment_name(&self, offset: usize) -> &str {
        &self.segment_of(offset).name
    }

    /// Which segment holds byte `offset` (0 is the pipeline file).
    pub fn segment_index(&self, offset: usize) -> usize {
        self.inner
            .segments
            .iter()
            .rposition(|segment| segment.start <= offset)
            .unwrap_or(0)
    }

    /// The pipeline file's name as given.
    pub fn name(&self) -> &str {
        &self.inner.segments[0].name
    }

    /// The pipeline file's text (without override segments).
    pub fn file_text(&self) -> &str {
        &self.inner.text[..self.inner.segments[0].end]
    }

    /// Where extra segment `index` (0-based, in the order given to [`SourceText::new`]) starts.
    pub fn segment_start(&self, index: usize) -> Option<usize> {
        self.inner
            .segments
            .get(index + 1)
            .map(|segment| segment.start)
    }

    /// The text of a span (empty when out of range).
    pub fn slice(&self, span: Span) -> &str {
        self.inner.text.get(span.start()..span.end()).unwrap_or("")
    }

    /// 1-based line of a byte offset within its segment: a binary search, for sorting and
    /// comparing many diagnostics.
    pub fn line(&self, offset: usize) -> usize {
        let segment = self.segment_of(offset);
        let offset = offset.clamp(segment.start, segment.end);
        self.line_index(offset) - self.line_index(segment.start) + 1
    }

    /// 1-based line and column (in characters) of a byte offset, for messages and tests.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let segment = self.segment_of(offset);
        let offset =
            floor_char_boundary(&self.inner.text, offset.clamp(segment.start, segment.end));
        let line = self.line_index(offset);
        let column = self.inner.text[self.inner.line_starts[line]..offset]
            .chars()
            .count()
            + 1;
        (line - self.line_index(segment.start) + 1, column)
    }

    /// 0-based index (over the whole buffer) of the line holding byte `offset`.
    fn line_index(&self, offset: usize) -> usize {
        self.inner
            .line_starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1)
    }

    /// Where line `index` starts, or `limit` when it starts at or after it.
    fn line_start(&self, index: usize, limit: usize) -> usize {
        self.inner
            .line_starts
            .get(index)
            .map_or(limit, |start| (*start).min(limit))
    }

    fn segment_of(&self, offset: usize) -> &Segment {
        self.inner
            .segments
            .iter()
            .rev()
            .find(|segment| segment.start <= offset)
            .unwrap_or(&self.inner.segments[0])
    }

    /// A window of the long line holding `start`: from a little before it (from `start`
    /// itself without context, as miette's header takes the span's column from that read) to
    /// the end of the span or the line, at most [`WINDOW`] bytes. A longer span is cut there,
    /// and miette then draws it as starting here without an end: better than a megabyte of
    /// underline.
    fn window<'a>(
        &'a self,
        segment: &Segment,
        start: usize,
        end: usize,
        context_lines_before: usize,
    ) -> MietteSpanContents<'a> {
        let line = self.line_index(start);
        let line_start = self.inner.line_starts[line];
        let next_line = self.line_start(line + 1, segment.end);
        let line_end = trim_line_break(&self.inner.text, line_start, next_line);
        let from = if context_lines_before == 0 {
            start
        } else {
            floor_char_boundary(
                &self.inner.text,
                start.saturating_sub(WINDOW_BEFORE).max(line_start),
            )
        };
        let wanted = end
            .max(start + 1)
            .saturating_add(WINDOW_BEFORE)
            .min(from + WINDOW);
        // Through the line break when the line's end is in reach, so a label at the end of
        // the line has a place, and a `\r\n` is never cut in two.
        let to = if wanted >= line_end {
            next_line
        } else {
            floor_char_boundary(&self.inner.text, wanted).max(from)
        };
        let base_line = self.line_index(segment.start);
        MietteSpanContents::new_named(
            segment.name.clone(),
            &self.inner.text.as_bytes()[from..to],
            SourceSpan::new(from.into(), to - from),
            line - base_line,
            self.inner.text[line_start..from].chars().count(),
            line - base_line,
        )
    }
}

/// Offsets where lines start: 0, and after every `\n`, `\r\n` and lone `\r`.
fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\n' => starts.push(index + 1),
            b'\r' => {
                if bytes.get(index + 1) == Some(&b'\n') {
                    index += 1;
                }
                starts.push(index + 1);
            }
            _ => {}
        }
        index += 1;
    }
    starts
}

/// `end` without the line break that ends the line `start..end`.
fn trim_line_break(text: &str, start: usize, end: usize) -> usize {
    let line = &text.as_bytes()[start..end];
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    start + line.len()
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

impl SourceCode for SourceText {
    /// miette's own reading of a `str` scans from its first byte to find the line of a span;
    /// here the line index finds the few lines it needs, and miette reads only those (so the
    /// result, and every rendered snippet, is the same as reading the whole segment).
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let segment = self.segment_of(span.offset());
        let start = span.offset().clamp(segment.start, segment.end);
        let end = span
            .offset()
            .saturating_add(span.len())
            .clamp(start, segment.end);
        let base_line = self.line_index(segment.start);
        let last_line = self.line_index(segment.end);
        let start_line = self.line_index(start);
        let end_line = self.line_index(end.saturating_sub(1).max(start));
        let first = start_line
            .saturating_sub(context_lines_before)
            .max(base_line);
        let last = end_line.saturating_add(context_lines_after).min(last_line);
        let long = (first..=last).any(|line| {
            self.line_start(line + 1, segment.end) - self.line_start(line, segment.end) > LONG_LINE
        });
        if long {
            return Ok(Box::new(self.window(
                segment,
                start,
                end,
                context_lines_before,
            )));
        }
        // One line more than miette reads, so it stops on its own, as in the whole text.
        let slice_start = self.line_start(first, segment.end);
        let slice_end = self.line_start(last.saturating_add(2), segment.end);
        let slice = &self.inner.text[slice_start..slice_end];
        let local = SourceSpan::new((start - slice_start).into(), end - start);
        let contents = slice.read_span(&local, context_lines_before, context_lines_after)?;
        let data_start = contents.span().offset() + slice_start;
        let line = first - base_line + contents.line();
        // Columns in characters, as editors count them (miette counts bytes).
        let column = self.inner.text
            [self.inner.line_starts[self.line_index(data_start)]..data_start]
            .chars()
            .count();
        Ok(Box::new(MietteSpanContents::new_named(
            segment.name.clone(),
            contents.data(),
            SourceSpan::new(data_start.into(), contents.span().len()),
            line,
            column,
            first - base_line + contents.line_count(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};
    use proptest::prelude::*;
    use thiserror::Error;

    use super::*;

    #[test]
    fn line_column_counts_characters_not_bytes() {
        let source = SourceText::new("p.yaml", "a: é\nbé: x\n", &[]);
        let offset = source.file_text().find('x').expect("x is in the text");
        assert_eq!(offset, 11);
        assert_eq!(source.line_column(offset), (2, 5));
    }

    #[test]
    fn override_segments_restart_line_numbers() {
        let source = SourceText::new(
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

    #[derive(Debug, Error, Diagnostic)]
    #[error("bad value")]
    struct Labelled {
        #[source_code]
        code: SourceText,
        #[label("here")]
        span: SourceSpan,
    }

    fn render(source: &SourceText, span: Span) -> String {
        let mut out = String::new();
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(80)
            .render_report(
                &mut out,
                &Labelled {
                    code: source.clone(),
                    span: span.into(),
                },
            )
            .expect("rendering into a String cannot fail");
        out
    }

    /// miette panicked ("formatting argument out of range") past visual column 65,535.
    #[test]
    fn a_label_past_column_65535_renders_a_window_with_its_line_and_column() {
        let text = format!("a: 1\nrun: {}BAD tail\nb: 2\n", "x".repeat(69_994));
        let source = SourceText::new("p.yaml", &text, &[]);
        let at = text.find("BAD").expect("marker");
        assert_eq!(source.line_column(at), (2, 70_000));
        let out = render(&source, Span::new(at, at + 3));
        assert!(out.contains("[p.yaml:2:70000]"), "{out}");
        assert!(out.contains("BAD tail") && out.contains("here"), "{out}");
        assert!(
            out.len() < 4 * WINDOW,
            "the line is windowed: {} bytes",
            out.len()
        );
        // Tabs are 4 columns wide in miette: 20,000 of them are 80,000 columns.
        let tabs = format!("run: \"{}\" BAD\n", "\t".repeat(20_000));
        let source = SourceText::new("p.yaml", &tabs, &[]);
        let at = tabs.find("BAD").expect("marker");
        assert!(render(&source, Span::new(at, at + 3)).contains("[p.yaml:1:20009]"));
    }

    #[test]
    fn a_span_longer_than_the_window_is_cut_without_losing_its_place() {
        let text = format!("a: 1\nrun: {}\n", "y".repeat(200_000));
        let source = SourceText::new("p.yaml", &text, &[]);
        let out = render(&source, Span::new(10, text.len() - 1));
        assert!(out.contains("[p.yaml:2:6]"), "{out}");
        assert!(out.len() < 8 * WINDOW, "{} bytes", out.len());
    }

    #[test]
    fn short_lines_render_with_context_as_before() {
        let text = "a: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n";
        let source = SourceText::new("p.yaml", text, &[]);
        let at = text.find("c: 3").expect("c");
        let ours = source
            .read_span(&Span::new(at, at + 4).into(), 1, 1)
            .expect("in range");
        let miettes = text
            .read_span(&Span::new(at, at + 4).into(), 1, 1)
            .expect("in range");
        assert_eq!(ours.data(), miettes.data());
        assert_eq!(ours.span(), miettes.span());
        assert_eq!(
            (ours.line(), ours.column(), ours.line_count()),
            (miettes.line(), miettes.column(), miettes.line_count())
        );
    }

    /// What the line index must agree with: a scan from the start, where `\n`, `\r\n` and a
    /// lone `\r` end a line and the `\r` of `\r\n` is an ordinary column before its break.
    fn naive_line_column(text: &str, offset: usize) -> (usize, usize) {
        let (mut line, mut column) = (1, 1);
        for (index, character) in text.char_indices() {
            if index >= offset {
                break;
            }
            let breaks =
                character == '\n' || (character == '\r' && !text[index + 1..].starts_with('\n'));
            if breaks {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        (line, column)
    }

    proptest! {
        #[test]
        fn the_line_index_agrees_with_a_scan(
            text in "[aé🎬 :\r\n]{0,40}",
            position in 0usize..200,
        ) {
            let source = SourceText::new("p.yaml", &text, &[]);
            let offset = floor_char_boundary(&text, position % (text.len() + 1));
            let expected = naive_line_column(&text, offset);
            prop_assert_eq!(source.line_column(offset), expected);
            prop_assert_eq!(source.line(offset), expected.0);
            let contents = source.read_span(&Span::new(offset, offset).into(), 0, 0);
            let contents = contents.expect("every offset of the text is readable");
            prop_assert_eq!((contents.line() + 1, contents.column() + 1), expected);
        }
    }
}
