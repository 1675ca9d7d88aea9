//! Commands an operator (or the registry's remediation policy) sends a worker.

use std::fmt;
use std::str::FromStr;

/// What a worker can be asked to do. The schema's `worker_commands_command_known` check lists
/// the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerCommand {
    /// Restart the worker's work loop (the process decides how).
    Restart,
}

/// Longest reason an operator may attach to a command (the schema's limit).
pub const COMMAND_REASON_MAX_CHARS: usize = 500;

impl WorkerCommand {
    /// Every command, in the order error messages list them.
    pub const ALL: [WorkerCommand; 1] = [WorkerCommand::Restart];

    /// The command's word in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerCommand::Restart => "restart",
        }
    }
}

impl FromStr for WorkerCommand {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerCommand::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = WorkerCommand::ALL.iter().map(|c| c.as_str()).collect();
                format!("must be one of: {}", known.join(", "))
            })
    }
}

impl fmt::Display for WorkerCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule for an operator's reason: at most 500 characters, no control characters but
/// newlines and tabs.
pub fn validate_command_reason(reason: &str) -> Result<(), String> {
    if reason.chars().count() > COMMAND_REASON_MAX_CHARS {
        return Err(format!(
            "must be at most {COMMAND_REASON_MAX_CHARS} characters"
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("must not contain control characters".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_commands_only() {
        assert_eq!("restart".parse(), Ok(WorkerCommand::Restart));
        assert_eq!(
            "reboot".parse::<WorkerCommand>(),
            Err("must be one of: restart".to_string())
        );
        assert!("Restart".parse::<WorkerCommand>().is_err());
    }

    #[test]
    fn reason_rule() {
        assert!(validate_command_reason("loop hung\nsince 10:00").is_ok());
        assert!(validate_command_reason(&"x".repeat(500)).is_ok());
        assert!(validate_command_reason(&"x".repeat(501)).is_err());
        assert!(validate_command_reason("bell\u{7}").is_err());
    }
}
