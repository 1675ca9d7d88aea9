//! The event bus of one replica: a LISTEN on the events channel that wakes every event-stream
//! client, whichever replica wrote the event.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::db::Db;

/// Wakes event-stream clients when new events may be in the table.
#[derive(Clone, Debug)]
pub struct EventBus {
    wake: broadcast::Sender<()>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            wake: broadcast::channel(64).0,
        }
    }
}

impl EventBus {
    /// A receiver of wake-ups; a lagging receiver just reads the table again.
    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.wake.subscribe()
    }

    /// Listens until cancelled, reconnecting after errors. Streams also poll the table, so a
    /// missed notification delays an event but never loses it.
    pub async fn run(self, db: Db, cancel: CancellationToken) {
        loop {
            let mut listener = match db.listen_events().await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for worker events; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    received = listener.recv() => match received {
                        Ok(_) => {
                            let _ = self.wake.send(());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "worker event listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }
}
