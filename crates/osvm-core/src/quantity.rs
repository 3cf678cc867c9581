//! Parsing of the quantities people write in stack files and flags: sizes, durations, CPUs.
//!
//! * Sizes are a whole number with an optional unit: `1048576`, `1024K`, `256M`, `512Mi`,
//!   `1G`, `1GiB`, `2T`. Units are binary multiples (K = 1024 bytes) whatever the spelling,
//!   because that is what the kernel's limits count in. The unit letter is case-insensitive
//!   and may be followed by `i`, `B` or `iB`; a bare `B` means bytes.
//! * Durations use `humantime` syntax: `2s`, `500ms`, `1m30s`, `1h`.
//! * CPUs are a positive, finite number of CPUs, fractions allowed (`0.5`).
//!
//! Every failure is a typed [`QuantityError`] whose message says what was expected.

use std::time::Duration;

/// Why a quantity could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing was given.
    #[error("empty value; expected {expected}")]
    Empty {
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A minus sign: sizes, durations and CPUs cannot be negative.
    #[error("`{input}` is negative; expected {expected}")]
    Negative {
        /// The text as given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The value is zero where at least one unit is required.
    #[error("`{input}` is zero; expected {expected}")]
    Zero {
        /// The text as given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("`{input}` is too large; a size must be below 16 EiB")]
    Overflow {
        /// The text as given.
        input: String,
    },
    /// The number part is missing or malformed.
    #[error("`{input}` is not a number; expected {expected}")]
    InvalidNumber {
        /// The text as given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The number is followed by something that is not a size unit.
    #[error("`{input}` has unknown unit `{unit}`; expected {expected}")]
    UnknownUnit {
        /// The text as given.
        input: String,
        /// The unrecognised suffix.
        unit: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A duration `humantime` could not parse.
    #[error("`{input}` is not a duration ({reason}); expected {expected}")]
    InvalidDuration {
        /// The text as given.
        input: String,
        /// `humantime`'s explanation.
        reason: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A CPU count that is NaN or infinite.
    #[error("`{input}` is not a finite number; expected {expected}")]
    NotFinite {
        /// The value as given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

/// What a valid size looks like, for messages.
pub const SIZE_EXPECTED: &str = "a whole number of bytes with an optional unit K, M, G or T \
     (binary multiples; `i` and `B` suffixes allowed), e.g. `256M`, `512Mi` or `1G`";

/// What a valid duration looks like, for messages.
pub const DURATION_EXPECTED: &str = "a number with a unit, e.g. `2s`, `500ms` or `1m30s`";

/// What a valid CPU count looks like, for messages.
pub const CPUS_EXPECTED: &str = "a positive number of CPUs, e.g. `0.5` or `2`";

/// Parses a size in bytes (`256M`, `512Mi`, `1G`, `1048576`). Zero is rejected.
pub fn parse_size(input: &str) -> Result<u64, QuantityError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty {
            expected: SIZE_EXPECTED,
        });
    }
    if text.starts_with('-') {
        return Err(QuantityError::Negative {
            input: input.to_owned(),
            expected: SIZE_EXPECTED,
        });
    }
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(QuantityError::InvalidNumber {
            input: input.to_owned(),
            expected: SIZE_EXPECTED,
        });
    }
    let multiplier = unit_multiplier(unit.trim_start()).ok_or_else(|| {
        if unit.starts_with(['.', ',']) {
            QuantityError::InvalidNumber {
                input: input.to_owned(),
                expected: SIZE_EXPECTED,
            }
        } else {
            QuantityError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.trim().to_owned(),
                expected: SIZE_EXPECTED,
            }
        }
    })?;
    let overflow = || QuantityError::Overflow {
        input: input.to_owned(),
    };
    let number: u64 = digits.parse().map_err(|_| overflow())?;
    let bytes = number.checked_mul(multiplier).ok_or_else(overflow)?;
    if bytes == 0 {
        return Err(QuantityError::Zero {
            input: input.to_owned(),
            expected: SIZE_EXPECTED,
        });
    }
    Ok(bytes)
}

/// The byte multiplier of a size unit, or `None` when it is not one.
fn unit_multiplier(unit: &str) -> Option<u64> {
    let mut chars = unit.chars();
    let Some(first) = chars.next() else {
        return Some(1);
    };
    let power = match first.to_ascii_uppercase() {
        'B' if chars.as_str().is_empty() => return Some(1),
        'K' => 1,
        'M' => 2,
        'G' => 3,
        'T' => 4,
        _ => return None,
    };
    match chars.as_str() {
        "" | "i" | "B" | "iB" => Some(1024u64.pow(power)),
        _ => None,
    }
}

/// Formats a duration for people: `200ms`, `3s`, `4m12s`, `2h05m`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Parses a duration (`2s`, `500ms`, `1m30s`). Zero is allowed; callers that need a positive
/// duration check it themselves.
pub fn parse_duration(input: &str) -> Result<Duration, QuantityError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty {
            expected: DURATION_EXPECTED,
        });
    }
    if text.starts_with('-') {
        return Err(QuantityError::Negative {
            input: input.to_owned(),
            expected: DURATION_EXPECTED,
        });
    }
    humantime::parse_duration(text).map_err(|e| QuantityError::InvalidDuration {
        input: input.to_owned(),
        reason: e.to_string(),
        expected: DURATION_EXPECTED,
    })
}

/// Parses a CPU count (`0.5`, `2`).
pub fn parse_cpus(input: &str) -> Result<f64, QuantityError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty {
            expected: CPUS_EXPECTED,
        });
    }
    let value: f64 = text.parse().map_err(|_| QuantityError::InvalidNumber {
        input: input.to_owned(),
        expected: CPUS_EXPECTED,
    })?;
    check_cpus(value)
}

/// Checks a CPU count that is already a number: positive and finite.
pub fn check_cpus(value: f64) -> Result<f64, QuantityError> {
    let input = value.to_string();
    if !value.is_finite() {
        return Err(QuantityError::NotFinite {
            input,
            expected: CPUS_EXPECTED,
        });
    }
    if value < 0.0 {
        return Err(QuantityError::Negative {
            input,
            expected: CPUS_EXPECTED,
        });
    }
    if value == 0.0 {
        return Err(QuantityError::Zero {
            input,
            expected: CPUS_EXPECTED,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;

    /// Tells whether an error is of the expected variant.
    type ErrorCheck = fn(&QuantityError) -> bool;

    #[test]
    fn sizes_accept_plain_bytes_and_binary_units() {
        let cases: &[(&str, u64)] = &[
            ("1048576", MI),
            ("1024K", MI),
            ("1024k", MI),
            ("256M", 256 * MI),
            ("256m", 256 * MI),
            ("512Mi", 512 * MI),
            ("512MiB", 512 * MI),
            ("512MB", 512 * MI),
            ("1G", 1024 * MI),
            ("1Gi", 1024 * MI),
            ("2T", 2 * 1024 * 1024 * MI),
            ("100B", 100),
            (" 64 M ", 64 * MI),
            ("16777215T", 16_777_215 * 1024 * 1024 * MI),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_size(input), Ok(*bytes), "{input}");
        }
    }

    #[test]
    fn sizes_reject_zero_negative_overflow_and_garbage() {
        let cases: &[(&str, ErrorCheck)] = &[
            ("", |e| matches!(e, QuantityError::Empty { .. })),
            ("   ", |e| matches!(e, QuantityError::Empty { .. })),
            ("0", |e| matches!(e, QuantityError::Zero { .. })),
            ("0M", |e| matches!(e, QuantityError::Zero { .. })),
            ("-1G", |e| matches!(e, QuantityError::Negative { .. })),
            ("16777216T", |e| matches!(e, QuantityError::Overflow { .. })),
            ("99999999999999999999", |e| {
                matches!(e, QuantityError::Overflow { .. })
            }),
            ("abc", |e| matches!(e, QuantityError::InvalidNumber { .. })),
            ("M", |e| matches!(e, QuantityError::InvalidNumber { .. })),
            ("1.5G", |e| matches!(e, QuantityError::InvalidNumber { .. })),
            ("12X", |e| matches!(e, QuantityError::UnknownUnit { .. })),
            ("12MX", |e| matches!(e, QuantityError::UnknownUnit { .. })),
            ("12Bi", |e| matches!(e, QuantityError::UnknownUnit { .. })),
            ("1 2M", |e| matches!(e, QuantityError::UnknownUnit { .. })),
        ];
        for (input, check) in cases {
            let err = parse_size(input).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn size_errors_say_what_was_expected() {
        let msg = parse_size("12X").unwrap_err().to_string();
        assert!(msg.contains("unknown unit `X`"), "{msg}");
        assert!(msg.contains("256M"), "{msg}");
    }

    #[test]
    fn durations_use_humantime_syntax() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(matches!(
            parse_duration(""),
            Err(QuantityError::Empty { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(QuantityError::Negative { .. })
        ));
        assert!(matches!(
            parse_duration("5"),
            Err(QuantityError::InvalidDuration { .. })
        ));
        assert!(matches!(
            parse_duration("2 fortnights"),
            Err(QuantityError::InvalidDuration { .. })
        ));
        let msg = parse_duration("soon").unwrap_err().to_string();
        assert!(msg.contains("1m30s"), "{msg}");
    }

    #[test]
    fn cpus_are_positive_finite_numbers() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert!(matches!(parse_cpus("0"), Err(QuantityError::Zero { .. })));
        assert!(matches!(
            parse_cpus("-1"),
            Err(QuantityError::Negative { .. })
        ));
        assert!(matches!(
            parse_cpus("many"),
            Err(QuantityError::InvalidNumber { .. })
        ));
        assert!(matches!(
            parse_cpus("inf"),
            Err(QuantityError::NotFinite { .. })
        ));
        assert!(matches!(
            check_cpus(f64::NAN),
            Err(QuantityError::NotFinite { .. })
        ));
    }
}
