//! The worker side of the DALS registry: register, beat, take commands, deregister.
//!
//! ```no_run
//! use dals_client::{Client, HeartbeatOptions, Registration};
//!
//! # async fn run() -> Result<(), dals_client::Error> {
//! let client = Client::builder("http://dals-controller:8003").build()?;
//! let registration = Registration::new(
//!     "Josephine-user_123", "truemark", "http://localhost:8080", "user_123");
//! let registered = client.register(&registration).await?;
//! println!("{} {}", registered.model_number, registered.serial_number);
//! let mut heartbeats =
//!     client.spawn_heartbeats(registration, registered, HeartbeatOptions::default())?;
//! while let Some(command) = heartbeats.next_command().await {
//!     println!("the registry asks: {}", command.command);
//! }
//! heartbeats.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod heartbeat;

pub use client::{
    Client, ClientBuilder, Command, CommandKind, DEFAULT_TIMEOUT, HeartbeatReply, Registered,
    Registration,
};
pub use error::Error;
pub use heartbeat::{
    DEFAULT_INTERVAL, HeartbeatOptions, Heartbeats, OnChange, State, Status, Stop, backoff_delay,
    jittered,
};
