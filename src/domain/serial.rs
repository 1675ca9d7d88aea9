use std::fmt;

use chrono::{DateTime, Utc};

use super::ModelNumber;

/// The deployment counter wraps after 16^5 = 1,048,576 seconds (about 12.1 days).
const COUNTER_MODULUS: i64 = 1 << 20;

/// A DALS serial number: `<model>-<8 hex from a UUIDv4>-<5 hex deployment counter>`,
/// such as `DMN-TM-01-A7F3B9E1-89F2C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialNumber {
    pub model: ModelNumber,
    /// The first 32 bits of a random (v4) UUID.
    pub shard: u32,
    /// Whole seconds of the deployment time, modulo 2^20.
    pub counter: u32,
}

impl SerialNumber {
    /// A new serial for a deployment at `deployed_at` (database time), with a fresh random shard.
    pub fn generate(model: ModelNumber, deployed_at: DateTime<Utc>) -> Self {
        let shard = u32::from_be_bytes(
            uuid::Uuid::new_v4().as_bytes()[..4]
                .try_into()
                .expect("a UUID has 16 bytes"),
        );
        SerialNumber {
            model,
            shard,
            counter: deployment_counter(deployed_at),
        }
    }
}

/// The counter of a serial: whole Unix seconds of the deployment time modulo 2^20, so serials
/// of one model sort by deployment time within each 12.1-day window.
pub fn deployment_counter(deployed_at: DateTime<Utc>) -> u32 {
    deployed_at.timestamp().rem_euclid(COUNTER_MODULUS) as u32
}

/// A serial number as a client sends it back: `DMN-XX-YY-XXXXXXXX-XXXXX`, upper-case hex.
pub fn validate_serial_number(serial: &str) -> Result<(), String> {
    let rule = || {
        "must be a serial number as registration answered it, DMN-XX-YY-XXXXXXXX-XXXXX \
         (upper-case hex), such as DMN-TM-01-A7F3B9E1-89F2C"
            .to_string()
    };
    let (model, rest) = serial.split_at_checked(9).ok_or_else(rule)?;
    let model_ok = model.strip_prefix("DMN-").is_some_and(|m| {
        let (family, generation) = m.split_at_checked(2).unwrap_or_default();
        family.parse::<super::FamilyCode>().is_ok()
            && generation.len() == 3
            && generation.starts_with('-')
            && generation[1..].bytes().all(|b| b.is_ascii_digit())
    });
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    };
    let parts: Vec<&str> = rest.split('-').collect();
    match parts.as_slice() {
        ["", shard, counter] if model_ok && hex(shard, 8) && hex(counter, 5) => Ok(()),
        _ => Err(rule()),
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:08X}-{:05X}", self.model, self.shard, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_matches_the_design() {
        let at = DateTime::from_timestamp(1_733_154_789, 0).unwrap();
        let s = SerialNumber {
            model: "DMN-TM-01".parse().unwrap(),
            shard: 0xA7F3_B9E1,
            counter: deployment_counter(at),
        };
        assert_eq!(
            s.to_string(),
            format!("DMN-TM-01-A7F3B9E1-{:05X}", 1_733_154_789 % (1 << 20))
        );
        let g = SerialNumber::generate("DMN-GN-01".parse().unwrap(), at).to_string();
        assert_eq!(g.len(), "DMN-GN-01-A7F3B9E1-89F2C".len());
        assert!(
            g[10..]
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase())
        );
    }

    #[test]
    fn serials_as_sent_back() {
        assert!(validate_serial_number("DMN-TM-01-A7F3B9E1-89F2C").is_ok());
        for bad in [
            "",
            "bogus",
            "😀",
            "DMN-TM-01-a7f3b9e1-89f2c",
            "DMN-TM-01-A7F3B9E1-89F2",
            "DMN-TM-1-A7F3B9E1-89F2C",
            "DMN-tm-01-A7F3B9E1-89F2C",
            "DMN-TM-01-A7F3B9E1-89F2C-",
            "XYZ-TM-01-A7F3B9E1-89F2C",
        ] {
            assert!(validate_serial_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counter_wraps_after_2_pow_20_seconds() {
        let t0 = DateTime::from_timestamp(0, 0).unwrap();
        let t1 = DateTime::from_timestamp(1 << 20, 0).unwrap();
        assert_eq!(deployment_counter(t0), deployment_counter(t1));
        assert_eq!(
            deployment_counter(DateTime::from_timestamp(0xFFFFF, 0).unwrap()),
            0xFFFFF
        );
    }
}
