//! Pure domain types: no I/O, no database, no network.

mod catalog;
mod command;
mod model;
mod serial;
pub mod signature;
mod webhook;
mod worker;

pub use catalog::{
    DESCRIPTION_MAX_CHARS, GENERIC_WORKER_TYPE, parse_generation, validate_catalog_worker_type,
    validate_description, validate_family_name,
};
pub use command::{COMMAND_REASON_MAX_CHARS, WorkerCommand, validate_command_reason};
pub use model::{FamilyCode, ModelNumber};
pub use serial::{SerialNumber, deployment_counter, validate_serial_number};
pub use webhook::{
    EVENT_KINDS, WEBHOOK_DESCRIPTION_MAX_CHARS, backoff_secs, parse_event_kinds,
    validate_webhook_description, validate_webhook_secret, validate_webhook_url,
};
pub use worker::{
    WorkerStatus, validate_api_url, validate_user_id, validate_worker_name, validate_worker_type,
};
