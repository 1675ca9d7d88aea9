//! The heartbeat task: beats on the registry's interval with jitter, backs off when the
//! registry is unavailable, registers again when the registry lost the worker, stops when a
//! newer deployment exists, hands commands to the worker, and deregisters on shutdown.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Client, Command, Registered, Registration};
use crate::error::Error;

/// Interval used when the registry does not say one (the design document's 30 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Deregistration attempts on shutdown when the registry is briefly unavailable.
const DEREGISTER_ATTEMPTS: u32 = 3;
/// Pause between deregistration attempts.
const DEREGISTER_PAUSE: Duration = Duration::from_millis(200);

/// A callback told of every change of the [`Status`].
pub type OnChange = Arc<dyn Fn(&Status) + Send + Sync>;

/// How the heartbeat task behaves.
#[derive(Clone)]
pub struct HeartbeatOptions {
    jitter: f64,
    initial_backoff: Duration,
    max_backoff: Duration,
    default_interval: Duration,
    deregister_on_shutdown: bool,
    on_change: Option<OnChange>,
}

impl Default for HeartbeatOptions {
    fn default() -> Self {
        HeartbeatOptions {
            jitter: 0.2,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            default_interval: DEFAULT_INTERVAL,
            deregister_on_shutdown: true,
            on_change: None,
        }
    }
}

impl fmt::Debug for HeartbeatOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatOptions")
            .field("jitter", &self.jitter)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("default_interval", &self.default_interval)
            .field("deregister_on_shutdown", &self.deregister_on_shutdown)
            .field("on_change", &self.on_change.is_some())
            .finish()
    }
}

impl HeartbeatOptions {
    /// Each wait is the interval shortened by a random fraction up to `jitter` (0 to 0.9,
    /// default 0.2), so a fleet started together spreads out and no worker beats later than
    /// the registry asked.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 0.9)
        } else {
            0.0
        };
        self
    }

    /// After a failure, wait `initial` (default 1 s), doubling per failure up to `max`
    /// (default 60 s), each wait randomized between half and all of it.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The interval when the registry does not say one (default 30 s).
    pub fn default_interval(mut self, interval: Duration) -> Self {
        self.default_interval = interval;
        self
    }

    /// Whether shutting down deregisters the deployment (default true).
    pub fn deregister_on_shutdown(mut self, deregister: bool) -> Self {
        self.deregister_on_shutdown = deregister;
        self
    }

    /// Calls `f` on every change of the state, serial number or interval (not on each
    /// answered heartbeat), from the heartbeat task: keep it short.
    pub fn on_change(mut self, f: impl Fn(&Status) + Send + Sync + 'static) -> Self {
        self.on_change = Some(Arc::new(f));
        self
    }
}

/// What the heartbeat task knows now.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub worker_name: String,
    pub model_number: String,
    /// The current deployment; it changes when the worker registers again.
    pub serial_number: String,
    /// Registrations so far: 1, plus one per re-registration.
    pub registrations: u32,
    /// Heartbeats the registry answered (watch receivers see each; the `on_change` callback
    /// does not).
    pub heartbeats: u64,
    /// The interval in use (the registry's).
    pub interval: Duration,
}

/// Where the heartbeat task is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Registered; no heartbeat answered yet for this deployment.
    Registered,
    /// The last heartbeat was answered.
    Active,
    /// The last attempt failed; the next one is in `retry_in`.
    Retrying {
        failures: u32,
        error: String,
        retry_in: Duration,
    },
    /// The task has ended.
    Stopped(Stop),
}

/// Why the heartbeat task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Shut down by the worker; `deregistered` tells whether the registry took the
    /// deregistration.
    Shutdown { deregistered: bool },
    /// A newer deployment of the name exists (409): this process should exit.
    Superseded { current_serial_number: String },
}

/// The handle on a running heartbeat task. Dropping it stops the task, which deregisters
/// in the background; [`Heartbeats::shutdown`] does the same and waits.
pub struct Heartbeats {
    status: watch::Receiver<Status>,
    commands: mpsc::UnboundedReceiver<Command>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeats")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Heartbeats {
    /// The status now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of every status update, each answered heartbeat included.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The next command from the registry, each handed over once; `None` once the task has
    /// stopped and every command was taken. Handed commands are acknowledged on the next
    /// heartbeat.
    pub async fn next_command(&mut self) -> Option<Command> {
        self.commands.recv().await
    }

    /// A command if one is waiting.
    pub fn try_next_command(&mut self) -> Option<Command> {
        self.commands.try_recv().ok()
    }

    /// Waits until the task stops by itself (a newer deployment, a deregistration) and
    /// returns the final status.
    pub async fn stopped(&self) -> Status {
        let mut rx = self.status.clone();
        let result = rx
            .wait_for(|s| matches!(s.state, State::Stopped(_)))
            .await
            .map(|s| s.clone());
        result.unwrap_or_else(|_| rx.borrow().clone())
    }

    /// Stops beating and deregisters (unless the task stopped already or options say not
    /// to), then returns the final status. An error means the deregistration failed.
    pub async fn shutdown(mut self) -> Result<Status, Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(result) => result?,
                Err(e) => return Err(Error::Task(e.to_string())),
            }
        }
        Ok(self.status.borrow().clone())
    }
}

/// `interval` shortened by a random fraction in `[0, jitter)`: never longer than the
/// interval, never shorter than `interval * (1 - jitter)`.
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 0.9)
    } else {
        0.0
    };
    interval.mul_f64(1.0 - jitter * rand::random::<f64>())
}

/// The wait after `failures` consecutive failures: `initial * 2^(failures-1)` capped at
/// `max`, randomized between half and all of it so a fleet does not retry in step.
pub fn backoff_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    full.mul_f64(0.5 + 0.5 * rand::random::<f64>())
}

impl Client {
    /// Starts the heartbeat task of a registered deployment (from [`Client::register`]).
    /// Needs a Tokio runtime.
    pub fn spawn_heartbeats(
        &self,
        registration: Registration,
        registered: Registered,
        options: HeartbeatOptions,
    ) -> Result<Heartbeats, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let interval = registered
            .heartbeat_interval()
            .unwrap_or(options.default_interval);
        let status = Status {
            state: State::Registered,
            worker_name: registered.worker_name.clone(),
            model_number: registered.model_number.clone(),
            serial_number: registered.serial_number.clone(),
            registrations: 1,
            heartbeats: 0,
            interval,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            client: self.clone(),
            registration,
            options,
            status: status_tx,
            commands: commands_tx,
            handed: HashSet::new(),
            to_ack: Vec::new(),
        };
        let handle = runtime.spawn(task.run(registered.commands, stop_rx));
        Ok(Heartbeats {
            status: status_rx,
            commands: commands_rx,
            stop: Some(stop_tx),
            task: Some(handle),
        })
    }
}

/// The next registry call of the loop.
enum Call {
    Heartbeat,
    Register,
}

struct Task {
    client: Client,
    registration: Registration,
    options: HeartbeatOptions,
    status: watch::Sender<Status>,
    commands: mpsc::UnboundedSender<Command>,
    /// Commands handed to the worker and not yet known acknowledged: a repeated delivery
    /// (the acknowledgement's answer was lost) is not handed twice.
    handed: HashSet<i64>,
    /// Handed commands to acknowledge on the next heartbeat.
    to_ack: Vec<i64>,
}

impl Task {
    /// Changes the status and notifies the receivers; the callback too when `change` says
    /// it changed more than the heartbeat count (state, serial number, interval).
    fn publish(&self, change: impl FnOnce(&mut Status) -> bool) {
        let mut notable = false;
        self.status.send_modify(|s| notable = change(s));
        if notable && let Some(on_change) = &self.options.on_change {
            let now = self.status.borrow().clone();
            on_change(&now);
        }
    }

    fn serial(&self) -> String {
        self.status.borrow().serial_number.clone()
    }

    fn interval(&self) -> Duration {
        self.status.borrow().interval
    }

    fn set_interval(&self, interval: Option<Duration>) -> bool {
        let Some(interval) = interval else {
            return false;
        };
        let mut changed = false;
        self.status.send_if_modified(|s| {
            changed = s.interval != interval;
            s.interval = interval;
            changed
        });
        if changed {
            tracing::info!(?interval, "registry changed the heartbeat interval");
        }
        changed
    }

    /// Hands new commands to the worker and remembers to acknowledge them.
    fn hand_over(&mut self, commands: Vec<Command>) {
        for command in commands {
            if !self.handed.insert(command.id) {
                continue;
            }
            let id = command.id;
            tracing::info!(id, command = %command.command, reason = %command.reason,
                           "command from the registry");
            // A worker that dropped the handle is stopping; its commands are moot.
            if self.commands.send(command).is_ok() {
                self.to_ack.push(id);
            }
        }
    }

    async fn run(
        mut self,
        first_commands: Vec<Command>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), Error> {
        self.hand_over(first_commands);
        let name = self.registration.name().to_string();
        let mut failures: u32 = 0;
        let mut call = Call::Heartbeat;
        let mut delay = jittered(self.interval(), self.options.jitter);
        let stopped = loop {
            tokio::select! {
                biased;
                _ = &mut stop => break None,
                () = tokio::time::sleep(delay) => {}
            }
            let outcome = match call {
                Call::Heartbeat => {
                    let serial = self.serial();
                    let acked = self.to_ack.clone();
                    let beat = self.client.heartbeat(&name, &serial, &acked);
                    let result = tokio::select! {
                        biased;
                        _ = &mut stop => break None,
                        result = beat => result,
                    };
                    result.map(|reply| {
                        // Acknowledged: the registry will not deliver these again.
                        self.to_ack.retain(|id| !acked.contains(id));
                        self.handed.retain(|id| !acked.contains(id));
                        let interval_changed = self.set_interval(reply.heartbeat_interval());
                        self.hand_over(reply.commands);
                        self.publish(|s| {
                            s.heartbeats += 1;
                            let changed = s.state != State::Active;
                            s.state = State::Active;
                            changed || interval_changed
                        });
                    })
                }
                Call::Register => {
                    let register = self.client.register(&self.registration);
                    let result = tokio::select! {
                        biased;
                        _ = &mut stop => break None,
                        result = register => result,
                    };
                    result.map(|registered| {
                        tracing::warn!(
                            serial = %registered.serial_number,
                            "registered again: the registry had lost or removed this worker"
                        );
                        // The old deployment's commands were cancelled with it.
                        self.handed.clear();
                        self.to_ack.clear();
                        self.set_interval(registered.heartbeat_interval());
                        self.publish(|s| {
                            s.serial_number = registered.serial_number.clone();
                            s.model_number = registered.model_number.clone();
                            s.registrations += 1;
                            s.state = State::Registered;
                            true
                        });
                        self.hand_over(registered.commands);
                        call = Call::Heartbeat;
                    })
                }
            };
            match outcome {
                Ok(()) => {
                    failures = 0;
                    delay = jittered(self.interval(), self.options.jitter);
                }
                // The registry lost the worker (404) or it was removed (410, deregistered by
                // someone else while this process still runs): this process is alive, so it
                // registers again, as a new deployment.
                Err(e @ (Error::WorkerNotFound { .. } | Error::Deregistered { .. }))
                    if matches!(call, Call::Heartbeat) =>
                {
                    let why = match e {
                        Error::WorkerNotFound { .. } => "the registry does not know this worker",
                        _ => "this worker was deregistered while still running",
                    };
                    tracing::warn!(worker = %name, "{why}; registering again");
                    call = Call::Register;
                    delay = Duration::ZERO;
                }
                Err(Error::Superseded {
                    current_serial_number,
                    ..
                }) => {
                    tracing::warn!(worker = %name, current = %current_serial_number,
                                   "a newer deployment of this worker exists; heartbeats stop");
                    break Some(Stop::Superseded {
                        current_serial_number,
                    });
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let mut wait = backoff_delay(
                        failures,
                        self.options.initial_backoff,
                        self.options.max_backoff,
                    );
                    if let Some(asked) = e.retry_after() {
                        wait = wait.max(asked.min(self.options.max_backoff));
                    }
                    tracing::warn!(error = %e, failures, retry_in = ?wait, "registry call failed");
                    delay = wait;
                    self.publish(|s| {
                        s.state = State::Retrying {
                            failures,
                            error: e.to_string(),
                            retry_in: wait,
                        };
                        true
                    });
                }
            }
        };
        let (stop, result) = match stopped {
            Some(stop) => (stop, Ok(())),
            None if !self.options.deregister_on_shutdown || matches!(call, Call::Register) => (
                Stop::Shutdown {
                    deregistered: false,
                },
                Ok(()),
            ),
            None => match self.deregister(&name).await {
                Ok(deregistered) => (Stop::Shutdown { deregistered }, Ok(())),
                Err(e) => (
                    Stop::Shutdown {
                        deregistered: false,
                    },
                    Err(e),
                ),
            },
        };
        self.publish(|s| {
            s.state = State::Stopped(stop);
            true
        });
        result
    }

    /// Deregisters the current deployment; false when there was nothing of ours to
    /// deregister (lost, already deregistered, or replaced by a newer deployment).
    async fn deregister(&self, name: &str) -> Result<bool, Error> {
        let serial = self.serial();
        // Commands the worker took since the last heartbeat are acknowledged first, so the
        // registry records them as taken rather than cancelled with the deployment.
        if !self.to_ack.is_empty()
            && let Err(e) = self.client.heartbeat(name, &serial, &self.to_ack).await
        {
            tracing::debug!(error = %e, "could not acknowledge commands before deregistering");
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.client.deregister(name, &serial).await {
                Ok(()) => {
                    tracing::info!(worker = %name, serial = %serial, "deregistered");
                    return Ok(true);
                }
                Err(
                    Error::WorkerNotFound { .. }
                    | Error::Deregistered { .. }
                    | Error::Superseded { .. },
                ) => return Ok(false),
                Err(e) if e.is_transient() && attempt < DEREGISTER_ATTEMPTS => {
                    tokio::time::sleep(DEREGISTER_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let interval = Duration::from_secs(30);
        let samples: Vec<Duration> = (0..2000).map(|_| jittered(interval, 0.2)).collect();
        assert!(samples.iter().all(|d| *d <= interval));
        assert!(samples.iter().all(|d| *d >= interval.mul_f64(0.8)));
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        // A fleet of 2000 spreads over most of the 6 s window.
        assert!(*max - *min > Duration::from_secs(5), "{min:?}..{max:?}");
        assert_eq!(jittered(interval, 0.0), interval);
        assert!(jittered(interval, 5.0) >= interval.mul_f64(0.1));
        assert_eq!(jittered(interval, f64::NAN), interval);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (failures, full) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (1000, 60)] {
            for _ in 0..100 {
                let d = backoff_delay(failures, initial, max);
                let full = Duration::from_secs(full);
                assert!(d <= full && d >= full / 2, "{failures}: {d:?}");
            }
        }
    }
}
