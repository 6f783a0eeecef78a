//! The handover of revoked partitions.
//!
//! A rebalance that takes partitions from this consumer waits, during the
//! rebalance itself and before the partitions are released, for the run
//! loop to finish and commit every batch it has taken: the records it read
//! of those partitions are committed by this consumer (in exactly-once, in
//! its transaction), and their next owner starts after them. Without the
//! handover, a transaction committed after the rebalance would carry the
//! offsets and outputs of records the next owner reads again.
//!
//! The wait is bounded ([`HANDOVER_WAIT`]): a run loop held up by a peer
//! that is away does not hold up the group's rebalance for longer. The
//! partitions are then released anyway and noted as *lost*: a transaction
//! holding records of a lost partition read before the loss is aborted,
//! never committed (see [`Handover::committing`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a rebalance waits for the run loop to commit what it has taken
/// before it releases the revoked partitions anyway. Default 10 s: a batch
/// in the chain and a transaction's commit take well under a second; a run
/// loop waiting for a peer that is away may take any time, and the group's
/// other members wait for this rebalance meanwhile.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The rebalance's side (the consumer's rebalance callback) and the run
/// loop's side of a handover.
#[derive(Default)]
pub struct Handover {
    state: Mutex<State>,
    /// A handover was answered, or a commit ended.
    changed: Condvar,
    /// A handover is asked for: wakes the run loop.
    asked: Notify,
}

#[derive(Default)]
struct State {
    /// Handovers asked for so far.
    asked: u64,
    /// Handovers answered so far.
    answered: u64,
    /// A run loop answers handovers: set from its start to its end.
    serving: bool,
    /// A transaction's offsets are being committed: a handover that gives
    /// up waits for the commit to end first.
    committing: bool,
}

/// A commit in progress (see [`Handover::committing`]); dropping it ends it.
pub struct Committing<'a>(&'a Handover);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.lock().committing = false;
        self.0.changed.notify_all();
    }
}

impl Handover {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("handover lock")
    }

    /// The rebalance's side: asks the run loop to commit what it has taken
    /// and waits up to `wait` for it. Returns whether it did so in time.
    /// When it did not, `give_up` runs before this returns, while no commit
    /// is in progress and none can start.
    pub fn ask(&self, wait: Duration, give_up: impl FnOnce()) -> bool {
        let mut state = self.lock();
        if !state.serving {
            return true;
        }
        state.asked += 1;
        let asked = state.asked;
        self.asked.notify_one();
        let deadline = Instant::now() + wait;
        loop {
            if state.answered >= asked || !state.serving {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !state.committing {
                give_up();
                // The run loop's answer to this handover would come too
                // late: it counts as answered.
                state.answered = state.answered.max(asked);
                return false;
            }
            // A commit that started before the deadline is let finish: its
            // records were read while the partitions were still ours.
            let left = if left.is_zero() { Duration::from_millis(100) } else { left };
            state = self.changed.wait_timeout(state, left).expect("handover lock").0;
        }
    }

    /// The rebalance's side, for partitions already lost: runs `lose`
    /// once no commit is in progress, without asking the run loop.
    pub fn lose(&self, lose: impl FnOnce()) {
        let mut state = self.lock();
        while state.committing {
            state = self.changed.wait(state).expect("handover lock");
        }
        lose();
    }

    /// The run loop's side: whether a handover is waiting for an answer.
    pub fn pending(&self) -> bool {
        let state = self.lock();
        state.answered < state.asked
    }

    /// Resolves once a handover is asked for (at once if one was asked for
    /// since the last call returned).
    pub async fn asked(&self) {
        self.asked.notified().await;
    }

    /// The run loop's side: everything taken when the handovers asked for
    /// so far were asked is committed.
    pub fn answer(&self) {
        let mut state = self.lock();
        state.answered = state.asked;
        drop(state);
        self.changed.notify_all();
    }

    /// A run loop answers handovers from now on. Until then a rebalance
    /// does not wait.
    pub fn serve(&self) {
        self.lock().serving = true;
    }

    /// The run loop has stopped: later handovers do not wait.
    pub fn close(&self) {
        self.lock().serving = false;
        self.changed.notify_all();
    }

    /// Starts a commit, unless `lost` (checked under the handover's lock,
    /// so no handover gives up meanwhile) says its records include some of
    /// a partition released without a handover since they were read.
    pub fn committing(&self, lost: impl FnOnce() -> Option<String>) -> Result<Committing<'_>, String> {
        let mut state = self.lock();
        if let Some(lost) = lost() {
            return Err(lost);
        }
        state.committing = true;
        Ok(Committing(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_handover_waits_for_the_answer_and_no_longer() {
        let handover = Arc::new(Handover::default());
        handover.serve();
        let answering = handover.clone();
        let answerer = std::thread::spawn(move || {
            while !answering.pending() {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
            answering.answer();
        });
        let gave_up = AtomicBool::new(false);
        let started = Instant::now();
        assert!(handover.ask(Duration::from_secs(10), || gave_up.store(true, Ordering::SeqCst)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(!gave_up.load(Ordering::SeqCst));
        assert!(!handover.pending());
        answerer.join().unwrap();
    }

    #[test]
    fn an_unanswered_handover_gives_up_after_its_wait() {
        let handover = Handover::default();
        handover.serve();
        let gave_up = AtomicBool::new(false);
        assert!(!handover.ask(Duration::from_millis(50), || gave_up.store(true, Ordering::SeqCst)));
        assert!(gave_up.load(Ordering::SeqCst));
        assert!(!handover.pending(), "a handover given up needs no answer");
    }

    #[test]
    fn a_handover_that_gives_up_lets_a_commit_in_progress_end_first() {
        let handover = Arc::new(Handover::default());
        handover.serve();
        let committing = handover.committing(|| None).expect("nothing lost");
        let ended = Arc::new(AtomicBool::new(false));
        let (asking, ended_seen) = (handover.clone(), ended.clone());
        let rebalance = std::thread::spawn(move || {
            asking.ask(Duration::from_millis(20), || assert!(ended_seen.load(Ordering::SeqCst), "gave up mid-commit"))
        });
        std::thread::sleep(Duration::from_millis(200));
        ended.store(true, Ordering::SeqCst);
        drop(committing);
        assert!(!rebalance.join().unwrap());
    }

    #[test]
    fn a_commit_of_lost_records_is_refused_and_a_closed_handover_does_not_wait() {
        let handover = Handover::default();
        handover.serve();
        let refused = handover.committing(|| Some("orders/1 was lost".into()));
        assert_eq!(refused.err().as_deref(), Some("orders/1 was lost"));
        handover.close();
        let started = Instant::now();
        assert!(handover.ask(Duration::from_secs(10), || panic!("gave up")));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
