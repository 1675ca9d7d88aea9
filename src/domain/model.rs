use std::fmt;
use std::str::FromStr;

/// A two-letter family code such as `TM` (TrueMark).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyCode(String);

impl FamilyCode {
    /// The Generic family, where unknown worker types register.
    pub fn generic() -> Self {
        FamilyCode("GN".to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FamilyCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(FamilyCode(s.to_string()))
        } else {
            Err("a family code is two upper-case letters A-Z, such as TM".to_string())
        }
    }
}

impl fmt::Display for FamilyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DALS model number, `DMN-<family>-<generation>` such as `DMN-TM-01`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelNumber {
    pub family: FamilyCode,
    pub generation: u8,
}

impl ModelNumber {
    /// Generations are two decimal digits, 01 to 99.
    pub fn new(family: FamilyCode, generation: u8) -> Result<Self, String> {
        if (1..=99).contains(&generation) {
            Ok(ModelNumber { family, generation })
        } else {
            Err("a generation is a number from 1 to 99".to_string())
        }
    }
}

impl fmt::Display for ModelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DMN-{}-{:02}", self.family, self.generation)
    }
}

impl FromStr for ModelNumber {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rule = || format!("{s:?} is not a model number of the form DMN-XX-YY");
        let rest = s.strip_prefix("DMN-").ok_or_else(rule)?;
        let (family, generation) = rest.split_once('-').ok_or_else(rule)?;
        if generation.len() != 2 || !generation.bytes().all(|b| b.is_ascii_digit()) {
            return Err(rule());
        }
        let family = family.parse().map_err(|_| rule())?;
        ModelNumber::new(family, generation.parse().map_err(|_| rule())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let m = ModelNumber::new("TM".parse().unwrap(), 1).unwrap();
        assert_eq!(m.to_string(), "DMN-TM-01");
        assert_eq!("DMN-RG-02".parse::<ModelNumber>().unwrap().generation, 2);
        assert!("DMN-tm-01".parse::<ModelNumber>().is_err());
        assert!("DMN-TM-1".parse::<ModelNumber>().is_err());
        assert!("DMN-TM-00".parse::<ModelNumber>().is_err());
    }
}
