//! Background workers. Every long-lived thread of a process that serves the
//! volume runs under a [`Runner`]: it has a name, a state and its last error
//! (`datamesh status` lists them), a stop signal that wakes it from its sleep,
//! and the runner joins it on shutdown, before the final flush.
//!
//! Threads rather than tasks: the engine is synchronous and its background work
//! blocks on disks and on the network bridge.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// What a worker is doing, as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Doing a round of work.
    Busy,
    /// Waiting for its next round (or for its event).
    Idle,
    /// Ended: stopped, or its work is done.
    Stopped,
}

/// One worker, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub state: WorkerState,
    /// Rounds of work done.
    pub rounds: u64,
    /// The last round that failed: its error, and when (RFC 3339).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// A worker's status, and its thread until joined.
type Slot = (Arc<Mutex<WorkerInfo>>, Option<JoinHandle<()>>);

#[derive(Default)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    workers: Mutex<Vec<Slot>>,
    /// How to wake workers blocked on something other than the stop signal
    /// (an accept, a sigwait).
    wakers: Mutex<Vec<Box<dyn Fn() + Send>>>,
}

use crate::util::lock;

/// Starts, lists, stops and joins the background workers of one process.
#[derive(Clone, Default)]
pub struct Runner {
    shared: Arc<Shared>,
}

/// What a worker's code holds: the stop signal and its own status.
pub struct Worker {
    shared: Arc<Shared>,
    info: Arc<Mutex<WorkerInfo>>,
}

impl Worker {
    /// Whether the runner has been told to stop.
    pub fn stopping(&self) -> bool {
        *lock(&self.shared.stop)
    }

    /// Sleeps for `d`, or less if told to stop; false once stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        let stop = lock(&self.shared.stop);
        let (stop, _) = self
            .shared
            .wake
            .wait_timeout_while(stop, d, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        !*stop
    }

    pub fn set_state(&self, state: WorkerState) {
        lock(&self.info).state = state;
    }

    /// Records one round of work and its outcome.
    pub fn round(&self, res: Result<(), String>) {
        let mut info = lock(&self.info);
        info.rounds += 1;
        if let Err(e) = res {
            tracing::warn!("worker {}: {e}", info.name);
            info.last_error = Some(e);
            info.last_error_at =
                Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        }
    }
}

impl Runner {
    pub fn new() -> Runner {
        Runner::default()
    }

    /// Runs `body` on a thread named `datamesh-NAME`. It should return soon
    /// after [`Worker::stopping`] turns true (sleeping with [`Worker::sleep`]
    /// wakes it then).
    pub fn spawn(
        &self,
        name: &str,
        body: impl FnOnce(&Worker) + Send + 'static,
    ) -> std::io::Result<()> {
        let info = Arc::new(Mutex::new(WorkerInfo {
            name: name.to_string(),
            state: WorkerState::Idle,
            rounds: 0,
            last_error: None,
            last_error_at: None,
        }));
        let worker = Worker {
            shared: self.shared.clone(),
            info: info.clone(),
        };
        // Registered before it starts, so a stop right after always joins it.
        let mut workers = lock(&self.shared.workers);
        let handle = std::thread::Builder::new()
            .name(format!("datamesh-{name}"))
            .spawn(move || {
                body(&worker);
                worker.set_state(WorkerState::Stopped);
            })?;
        workers.push((info, Some(handle)));
        Ok(())
    }

    /// Runs `round` every `every` until stopped; an error is recorded as the
    /// worker's last error and the rounds go on.
    pub fn every(
        &self,
        name: &str,
        every: Duration,
        mut round: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<()> {
        self.spawn(name, move |w| {
            while w.sleep(every) {
                w.set_state(WorkerState::Busy);
                w.round(round());
                w.set_state(WorkerState::Idle);
            }
        })
    }

    /// `wake` is called at stop, for a worker that blocks on something other
    /// than [`Worker::sleep`].
    pub fn on_stop(&self, wake: impl Fn() + Send + 'static) {
        lock(&self.shared.wakers).push(Box::new(wake));
    }

    /// Every worker started, in start order.
    pub fn list(&self) -> Vec<WorkerInfo> {
        lock(&self.shared.workers)
            .iter()
            .map(|(info, _)| lock(info).clone())
            .collect()
    }

    /// Tells every worker to stop and waits for each to end.
    pub fn stop(&self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        for wake in lock(&self.shared.wakers).iter() {
            wake();
        }
        let handles: Vec<_> = lock(&self.shared.workers)
            .iter_mut()
            .filter_map(|(_, h)| h.take())
            .collect();
        for h in handles {
            let name = h.thread().name().unwrap_or("worker").to_string();
            if h.join().is_err() {
                tracing::error!("{name} panicked");
            }
        }
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP for a daemon (a mount, `datamesh
/// serve`), which turns them into its orderly end. A handler, not a blocked
/// mask: RocksDB's background threads run with every signal unblocked, so a
/// signal's default action could land on one of them and end the process with
/// the volume still mounted. Call it before opening the engine: a signal that
/// comes meanwhile waits for the daemon.
pub fn catch_exit_signals() -> std::io::Result<ExitSignals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map(ExitSignals)
}

/// The exit signals caught by [`catch_exit_signals`].
pub struct ExitSignals(signal_hook::iterator::Signals);

impl ExitSignals {
    /// Runs `end` (named `what` in logs) on an exit signal, from the worker
    /// `signals`, until it succeeds (an unmount refused while the mount is
    /// busy is tried again at the next signal); the worker ends without a
    /// signal once `runner` stops.
    pub fn watch(
        self,
        runner: &Runner,
        what: &'static str,
        mut end: impl FnMut() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut signals = self.0;
        let waiting = signals.handle();
        runner.spawn("signals", move |w| {
            for sig in signals.forever() {
                tracing::info!("signal {sig}: {what}");
                match end() {
                    Ok(()) => return,
                    Err(e) => w.round(Err(format!("{what}: {e}"))),
                }
            }
        })?;
        runner.on_stop(move || waiting.close());
        Ok(())
    }
}

/// A job the [`JobPool`] runs once.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of named threads that run one-off jobs (seals, read-ahead
/// decodes) from one queue. Idle threads block on the queue: rayon's workers,
/// which ran these jobs before, yield in a loop for a while after every job,
/// and on a machine whose cores also serve storage peers that spinning took a
/// tenth of the mount's CPU. Dropping the pool lets the queued jobs finish;
/// then its threads end.
pub struct JobPool {
    queue: crossbeam_channel::Sender<Job>,
    threads: usize,
}

impl JobPool {
    /// `threads` threads (at least one) named `NAME-0`, `NAME-1`, ….
    pub fn new(name: &str, threads: usize) -> std::io::Result<JobPool> {
        let threads = threads.max(1);
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for job in jobs {
                        // As with rayon: whoever waits on a job that panicked
                        // would wait forever, so the process ends (the panic
                        // hook has printed why).
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            std::process::abort();
                        }
                    }
                })?;
        }
        Ok(JobPool { queue, threads })
    }

    /// Queues `job`; a free thread runs it.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        // Cannot fail: the threads hold the receivers until this sender goes.
        let _ = self.queue.send(Box::new(job));
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    #[test]
    fn workers_run_record_errors_and_stop_at_once() {
        let runner = Runner::new();
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        runner
            .every("tick", Duration::from_millis(5), move || {
                match m.fetch_add(1, Ordering::Relaxed) {
                    2 => Err("third round failed".into()),
                    _ => Ok(()),
                }
            })
            .unwrap();
        // A worker sleeping a long time is woken by the stop.
        runner
            .every("slow", Duration::from_secs(3600), || Ok(()))
            .unwrap();
        let start = Instant::now();
        while n.load(Ordering::Relaxed) < 5 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        let list = runner.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "tick");
        assert_eq!(list[0].last_error.as_deref(), Some("third round failed"));
        assert!(list[0].last_error_at.is_some());
        assert!(list[1].last_error.is_none());
        let stopping = Instant::now();
        runner.stop();
        assert!(stopping.elapsed() < Duration::from_secs(2));
        assert!(
            runner
                .list()
                .iter()
                .all(|w| w.state == WorkerState::Stopped)
        );
        // Stopped means stopped: no round runs after stop returned.
        let after = n.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(n.load(Ordering::Relaxed), after);
    }

    #[test]
    fn a_job_pool_runs_every_job_on_its_named_threads_even_when_dropped() {
        let pool = JobPool::new("datamesh-test", 2).unwrap();
        assert_eq!(pool.threads(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..20 {
            let tx = tx.clone();
            pool.spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                let name = std::thread::current().name().unwrap().to_string();
                tx.send((i, name)).unwrap();
            });
        }
        // Dropped with jobs still queued: they run all the same.
        drop(pool);
        drop(tx);
        let mut seen: Vec<(i32, String)> = rx.iter().collect();
        seen.sort();
        assert_eq!(seen.len(), 20);
        assert!(seen.iter().all(|(_, n)| n.starts_with("datamesh-test-")));
    }
}
