//! Rules of the model catalog as operators edit it. The schema's CHECK constraints
//! (`model_catalog_*`, `model_families_*`) hold the same rules.

/// The worker type unknown types register as; it cannot be deleted and stays in family GN.
pub const GENERIC_WORKER_TYPE: &str = "generic";

/// Longest description of a catalog entry or a family.
pub const DESCRIPTION_MAX_CHARS: usize = 256;

/// A worker type as the catalog keys it: 1-64 characters of `a-z`, `0-9`, `.`, `_`, `-`,
/// starting with a letter or digit (the schema's `^[a-z0-9][a-z0-9._-]{0,63}$`).
pub fn validate_catalog_worker_type(worker_type: &str) -> Result<(), String> {
    let rule = || {
        "must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
            .to_string()
    };
    let mut bytes = worker_type.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && worker_type.len() <= 64 {
        Ok(())
    } else {
        Err(rule())
    }
}

/// A generation as sent: a whole number from 1 to 99 (the `YY` of `DMN-XX-YY`).
pub fn parse_generation(generation: i64) -> Result<u8, String> {
    u8::try_from(generation)
        .ok()
        .filter(|g| (1..=99).contains(g))
        .ok_or_else(|| format!("must be a number from 1 to 99 (got {generation})"))
}

/// A family's name, such as `TrueMark`: 1-64 characters on one line.
pub fn validate_family_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > 64 {
        return Err(format!("must be 1-64 characters (got {len})"));
    }
    if name.trim().is_empty() {
        return Err("must not be blank".to_string());
    }
    one_line(name)
}

/// A description of an entry or a family: at most 256 characters on one line, possibly empty.
pub fn validate_description(description: &str) -> Result<(), String> {
    let len = description.chars().count();
    if len > DESCRIPTION_MAX_CHARS {
        return Err(format!(
            "must be at most {DESCRIPTION_MAX_CHARS} characters (got {len})"
        ));
    }
    one_line(description)
}

fn one_line(text: &str) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        Err("must be one line without control characters".to_string())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_types_follow_the_schema_pattern() {
        for ok in [
            "truemark",
            "new-worker-type",
            "a",
            "0x",
            "v1.2_b-c",
            &"a".repeat(64),
        ] {
            assert!(validate_catalog_worker_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-lead",
            ".lead",
            "Upper",
            "with space",
            "é",
            "a/b",
            &"a".repeat(65),
        ] {
            assert!(validate_catalog_worker_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generations_are_1_to_99() {
        assert_eq!(parse_generation(1), Ok(1));
        assert_eq!(parse_generation(99), Ok(99));
        for bad in [0, 100, -1, 256, 257, i64::MAX] {
            assert!(parse_generation(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_descriptions() {
        assert!(validate_family_name("New Worker").is_ok());
        assert!(validate_family_name("").is_err());
        assert!(validate_family_name("   ").is_err());
        assert!(validate_family_name(&"n".repeat(65)).is_err());
        assert!(validate_family_name("two\nlines").is_err());
        assert!(validate_description("").is_ok());
        assert!(validate_description(&"é".repeat(256)).is_ok());
        assert!(validate_description(&"d".repeat(257)).is_err());
        assert!(validate_description("tab\there").is_err());
    }
}
