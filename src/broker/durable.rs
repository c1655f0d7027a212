//! Producers waiting for durability (`durability=fsync`), as tasks: the group commit.
//!
//! Each waiter registers the offset it needs durable and gets a oneshot answer. One flush
//! loop per partition runs while anyone waits: it msyncs everything appended so far, then
//! answers exactly the waiters that flush covered (no one else is woken), and flushes again
//! for those that appended meanwhile. A flush by anyone else (the periodic one) answers the
//! waiters it covered too. A failed flush answers every waiter it did not cover with the
//! failure: each of them was waiting when it failed.
//!
//! The invariant that makes every waiter answered: while the queue is not empty, a flush loop
//! is running (the loop ends only when it finds the queue empty, under the same lock).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The answer a waiter gets: `Ok` once durable, or why the flush failed.
pub type Answer = Result<(), Arc<str>>;

#[derive(Debug, Default)]
pub struct DurableWaiters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Waiters by the offset they need durable (every record below it).
    waiting: Vec<(u64, oneshot::Sender<Answer>)>,
    /// A flush loop for the waiters is running.
    looping: bool,
}

/// What [`DurableWaiters::register`] asks of its caller.
pub enum Registered {
    /// Wait for the answer; a flush loop is already running.
    Wait(oneshot::Receiver<Answer>),
    /// Wait for the answer, and start the flush loop: none was running.
    StartLoop(oneshot::Receiver<Answer>),
}

impl DurableWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter for every record below `end`.
    pub fn register(&self, end: u64) -> Registered {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.waiting.push((end, tx));
        if inner.looping {
            Registered::Wait(rx)
        } else {
            inner.looping = true;
            Registered::StartLoop(rx)
        }
    }

    /// Answers the waiters a flush covered (all below `durable`), and, when the flush failed,
    /// every other waiter with the failure.
    pub fn answer(&self, durable: u64, failure: Option<&Arc<str>>) {
        let answered = {
            let mut inner = self.lock();
            if inner.waiting.is_empty() {
                return;
            }
            match failure {
                Some(_) => std::mem::take(&mut inner.waiting),
                None => {
                    let (done, left) = std::mem::take(&mut inner.waiting)
                        .into_iter()
                        .partition(|(end, _)| *end <= durable);
                    inner.waiting = left;
                    done
                }
            }
        };
        // Sent outside the lock: a send wakes a task.
        for (end, tx) in answered {
            let answer = match failure {
                Some(why) if end > durable => Err(Arc::clone(why)),
                _ => Ok(()),
            };
            let _ = tx.send(answer);
        }
    }

    /// Called by the flush loop after each flush: whether to flush again (someone still
    /// waits). When not, the loop has ended (a later waiter starts a new one).
    pub fn continue_loop(&self) -> bool {
        let mut inner = self.lock();
        if inner.waiting.is_empty() {
            inner.looping = false;
            false
        } else {
            true
        }
    }

    /// Ends the flush loop without a flush: every waiter is answered with `why`. For a loop
    /// that cannot go on (it panicked, or never ran).
    pub fn abandon(&self, why: &str) {
        let answered = {
            let mut inner = self.lock();
            inner.looping = false;
            std::mem::take(&mut inner.waiting)
        };
        let why: Arc<str> = why.into();
        for (_, tx) in answered {
            let _ = tx.send(Err(Arc::clone(&why)));
        }
    }

    /// Waiters registered and not yet answered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx(r: Registered) -> (bool, oneshot::Receiver<Answer>) {
        match r {
            Registered::Wait(rx) => (false, rx),
            Registered::StartLoop(rx) => (true, rx),
        }
    }

    #[test]
    fn only_covered_waiters_are_answered_and_the_loop_runs_while_any_wait() {
        let w = DurableWaiters::default();
        let (first_starts, mut a) = rx(w.register(10));
        let (second_starts, mut b) = rx(w.register(20));
        assert!(first_starts && !second_starts);
        w.answer(15, None);
        assert_eq!(a.try_recv().unwrap(), Ok(()));
        assert!(
            b.try_recv().is_err(),
            "a waiter above the flush is not answered"
        );
        assert!(w.continue_loop(), "a waiter is left: the loop goes on");
        w.answer(20, None);
        assert_eq!(b.try_recv().unwrap(), Ok(()));
        assert!(!w.continue_loop());
        let (starts_again, _c) = rx(w.register(30));
        assert!(
            starts_again,
            "the loop ended, so the next waiter starts one"
        );
    }

    #[test]
    fn a_failed_flush_answers_every_waiter_it_did_not_cover_with_the_failure() {
        let w = DurableWaiters::default();
        let (_, mut a) = rx(w.register(5));
        let (_, mut b) = rx(w.register(9));
        w.answer(5, Some(&Arc::from("disk full")));
        assert_eq!(a.try_recv().unwrap(), Ok(()));
        assert_eq!(b.try_recv().unwrap(), Err(Arc::from("disk full")));
        assert_eq!(w.len(), 0);
        assert!(!w.continue_loop());
    }
}
