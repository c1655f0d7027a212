//! The engine's background file worker: one thread that runs jobs off the append path.
//!
//! The first write to a fresh page of a mapped file costs a page fault (about half a
//! microsecond here, three quarters of the time of a plain copy into a fresh mapping), and
//! creating a segment's files costs milliseconds. Writers hand such work to the worker (one
//! non-blocking channel send): reserving and pre-faulting the next chunk of the active
//! segment, creating a spare segment for the next roll, finishing a roll. The worker knows
//! nothing of segments or partitions: a job is a closure, which holds a `Weak` reference to
//! what it works on, so that a job never keeps a deleted partition alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A cheap, cloneable handle to submit jobs.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Option<Job>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerHandle")
    }
}

impl WorkerHandle {
    /// Queues `job`. Never blocks; once the worker stopped, the job is dropped (callers do
    /// the work themselves when it matters: a writer whose pre-fault never came reserves
    /// its own blocks, a roll left unfinished is finished by the next flush).
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let _ = self.tx.send(Some(Box::new(job)));
    }
}

/// The worker thread. Dropping it stops the thread and joins it.
#[derive(Debug)]
pub struct FileWorker {
    handle: WorkerHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileWorker {
    pub fn spawn() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Option<Job>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mapq-files".into())
            .spawn(move || {
                for job in rx {
                    // Acquire: pairs with the Release in `drop`.
                    match job {
                        Some(job) if !stopping.load(Ordering::Acquire) => job(),
                        _ => break,
                    }
                }
            })?;
        Ok(FileWorker {
            handle: WorkerHandle { tx },
            stop,
            thread: Some(thread),
        })
    }

    /// A handle for [`super::LogConfig::worker`].
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }
}

impl Drop for FileWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the thread (logs may still hold senders, so the channel stays open).
        let _ = self.handle.tx.send(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_in_order_and_drops_them_once_stopped() {
        let worker = FileWorker::spawn().unwrap();
        let handle = worker.handle();
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            handle.submit(move || tx.send(i).unwrap());
        }
        let got: Vec<i32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got, [0, 1, 2]);
        drop(worker);
        handle.submit(move || tx.send(9).unwrap());
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
    }
}
