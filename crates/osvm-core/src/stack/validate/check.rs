//! Checks of single values shared by every table: names, paths, ports, numbers, durations.

use std::ops::Range;
use std::path::{Component as PathPart, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::quantity;

use crate::stack::error::{Source, StackError};
use crate::stack::file::Int;

/// The longest name a stack or component may have (a DNS label).
pub(super) const MAX_NAME_LEN: usize = 63;

/// The rule for names, for messages.
pub(super) const NAME_RULE: &str =
    "1 to 63 lowercase letters, digits and '-', starting with a letter and not ending with '-'";

/// Unwraps a required value or reports `message` at `at`.
pub(super) fn required<T>(
    src: &Source<'_>,
    value: Option<Spanned<T>>,
    at: Range<usize>,
    message: &str,
) -> Result<Spanned<T>, StackError> {
    value.ok_or_else(|| src.error(at, message))
}

/// Checks a stack or component name against [`NAME_RULE`].
pub(super) fn check_name(
    src: &Source<'_>,
    name: &Spanned<String>,
    what: &str,
) -> Result<(), StackError> {
    let text = name.get_ref();
    match name_problem(text) {
        Some(problem) => Err(src.error(
            name.span(),
            format!("invalid {what} `{text}`: {problem}; expected {NAME_RULE}"),
        )),
        None => Ok(()),
    }
}

/// What breaks [`NAME_RULE`] in `text`, if anything.
pub(super) fn name_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        Some("it is empty".to_owned())
    } else if text.len() > MAX_NAME_LEN {
        Some(format!("it is {} characters long", text.chars().count()))
    } else if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it does not start with a lowercase letter".to_owned())
    } else if let Some(bad) = text
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        Some(format!("it contains {bad:?}"))
    } else if text.ends_with('-') {
        Some("it ends with '-'".to_owned())
    } else {
        None
    }
}

/// Checks a trust domain: a lowercase DNS name.
pub(super) fn check_dns_name(src: &Source<'_>, name: &Spanned<String>) -> Result<(), StackError> {
    let text = name.get_ref();
    let problem = if text.is_empty() {
        Some("it is empty".to_owned())
    } else if text.len() > 253 {
        Some("it is longer than 253 characters".to_owned())
    } else {
        text.split('.').find_map(|label| {
            if label.is_empty() {
                Some("it has an empty label (two dots, or a leading or trailing dot)".to_owned())
            } else if label.len() > MAX_NAME_LEN {
                Some(format!("label `{label}` is longer than 63 characters"))
            } else if let Some(bad) = label
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
            {
                Some(format!("it contains {bad:?}"))
            } else if label.starts_with('-') || label.ends_with('-') {
                Some(format!("label `{label}` starts or ends with '-'"))
            } else {
                None
            }
        })
    };
    match problem {
        Some(problem) => Err(src.error(
            name.span(),
            format!(
                "invalid trust_domain `{text}`: {problem}; expected a lowercase DNS name such as \
                 \"osvm.local\" or \"prod.example.com\""
            ),
        )),
        None => Ok(()),
    }
}

/// Checks an environment variable name: non-empty, no `=`, no NUL.
pub(super) fn check_env_key(src: &Source<'_>, key: &Spanned<String>) -> Result<(), StackError> {
    let text = key.get_ref();
    if text.is_empty() || text.contains(['=', '\0']) {
        return Err(src.error(
            key.span(),
            format!(
                "invalid environment variable name {text:?}; a name must be non-empty and \
                 contain no '=' or NUL character"
            ),
        ));
    }
    Ok(())
}

/// Rejects strings with a NUL character, which cannot be passed to a process.
pub(super) fn no_nul(
    src: &Source<'_>,
    value: &Spanned<String>,
    what: &str,
) -> Result<(), StackError> {
    if value.get_ref().contains('\0') {
        return Err(src.error(value.span(), format!("{what} contains a NUL character")));
    }
    Ok(())
}

/// An absolute path; with `no_parent`, also without `..` components.
pub(super) fn absolute_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    what: &str,
    no_parent: bool,
) -> Result<PathBuf, StackError> {
    no_nul(src, value, what)?;
    let path = PathBuf::from(value.get_ref());
    if !path.is_absolute() {
        return Err(src.error(
            value.span(),
            format!(
                "{what} `{}` must be an absolute path (starting with '/')",
                value.get_ref()
            ),
        ));
    }
    if no_parent && path.components().any(|c| matches!(c, PathPart::ParentDir)) {
        return Err(src.error(
            value.span(),
            format!("{what} `{}` must not contain `..`", value.get_ref()),
        ));
    }
    Ok(path)
}

/// A TCP or UDP port, 1 to 65535.
pub(super) fn port_number(
    src: &Source<'_>,
    value: &Spanned<Int>,
    what: &str,
) -> Result<u16, StackError> {
    int_in(src, value, 1, 65535, what)
}

/// An integer in `min..=max`, converted to the target type.
pub(super) fn int_in<T: TryFrom<i64>>(
    src: &Source<'_>,
    value: &Spanned<Int>,
    min: i64,
    max: i64,
    what: &str,
) -> Result<T, StackError> {
    let n = value.get_ref().0;
    let out_of_range = || {
        src.error(
            value.span(),
            format!("{what} {n} is out of range; expected a whole number from {min} to {max}"),
        )
    };
    if !(min..=max).contains(&n) {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

/// A duration such as `2s`.
pub(super) fn duration(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Duration, StackError> {
    quantity::parse_duration(value.get_ref())
        .map_err(|e| src.error(value.span(), format!("invalid `{key}`: {e}")))
}
