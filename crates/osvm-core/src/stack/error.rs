//! The stack file's error type and the mapping from byte offsets to line and column.
//!
//! Every problem with a stack file, from a TOML syntax error to a policy naming a component that
//! does not exist, is reported as `FILE:LINE:COL: MESSAGE` so that editors and terminals can jump
//! to it. Lines and columns are 1-based; a column counts characters, not bytes.

use std::ops::Range;
use std::path::PathBuf;

/// Why a stack file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The file could not be read.
    #[error("{}: cannot read stack file: {source}", path.display())]
    Io {
        /// The path that was asked for.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid stack: bad TOML, an unknown or missing key, a value
    /// of the wrong type, or a value that breaks a rule of the stack file.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file name as given to [`parse`](super::parse) or [`load`](super::load).
        file: String,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl StackError {
    /// The 1-based line, for errors that point into the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            StackError::Invalid { line, .. } => Some(*line),
            StackError::Io { .. } => None,
        }
    }

    /// The 1-based column, for errors that point into the file.
    pub fn column(&self) -> Option<usize> {
        match self {
            StackError::Invalid { column, .. } => Some(*column),
            StackError::Io { .. } => None,
        }
    }

    /// The message without the location prefix (for I/O errors, the underlying error).
    pub fn message(&self) -> String {
        match self {
            StackError::Invalid { message, .. } => message.clone(),
            StackError::Io { source, .. } => source.to_string(),
        }
    }
}

/// The text of one stack file, able to turn byte spans into located errors.
pub(crate) struct Source<'a> {
    /// The whole file.
    text: &'a str,
    /// The name errors carry.
    file: &'a str,
}

impl<'a> Source<'a> {
    /// Wraps the text of `file`.
    pub(crate) fn new(text: &'a str, file: &'a str) -> Self {
        Self { text, file }
    }

    /// 1-based line and character column of byte `offset` (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// An error pointing at the start of `span`.
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> StackError {
        let (line, column) = self.position(span.start);
        StackError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A warning pointing at the start of `span`.
    pub(crate) fn warning(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> super::StackWarning {
        let (line, column) = self.position(span.start);
        super::StackWarning {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Converts a TOML deserialization error, which carries its own span when it has one.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> StackError {
        let span = err.span().unwrap_or(0..0);
        self.error(span, err.message().trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = Source::new("ab\nçd = 1\n", "f.toml");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(1), (1, 2));
        assert_eq!(src.position(3), (2, 1));
        // `ç` is two bytes; `d` is the second character of line 2.
        assert_eq!(src.position(5), (2, 2));
        // Offsets inside a character or past the end are clamped.
        assert_eq!(src.position(4), (2, 1));
        assert_eq!(src.position(1000), (3, 1));
    }

    #[test]
    fn invalid_errors_display_file_line_column_message() {
        let src = Source::new("a\nbc\n", "stack.toml");
        let err = src.error(3..4, "bad value");
        assert_eq!(err.to_string(), "stack.toml:2:2: bad value");
        assert_eq!((err.line(), err.column()), (Some(2), Some(2)));
        assert_eq!(err.message(), "bad value");
    }
}
