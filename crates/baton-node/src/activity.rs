//! Activity tokens: work a drain must wait for, counted while it is held.
//!
//! Ingress holds one from the end of a message's data until its commit is answered, and
//! its drain waits for the count to reach zero ([`Activity::idle`]) instead of polling or
//! sleeping. (Delivery counts its messages in flight in its in-flight registry, which
//! the delivery drain waits on the same way.)

use std::sync::Arc;
use tokio::sync::watch;

/// A count of activities in progress. Cheap to clone; clones share the count.
#[derive(Clone)]
pub struct Activity(Arc<watch::Sender<usize>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(watch::channel(0).0))
    }
}

impl Activity {
    /// Starts an activity; it ends when the token is dropped (also on a panic's unwind
    /// or when the task holding it is aborted).
    pub fn begin(&self) -> ActivityToken {
        self.0.send_modify(|n| *n += 1);
        ActivityToken(self.clone())
    }

    /// Activities in progress now.
    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until no activity is in progress.
    pub async fn idle(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so the wait ends only at zero.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One activity in progress (see [`Activity::begin`]).
pub struct ActivityToken(Activity);

impl Drop for ActivityToken {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_every_token_even_one_dropped_by_a_panic() {
        let activity = Activity::default();
        let a = activity.begin();
        let b = activity.begin();
        assert_eq!(activity.count(), 2);
        let task = tokio::spawn({
            let b = b;
            async move {
                let _b = b;
                panic!("a worker fails while holding its token");
            }
        });
        assert!(task.await.is_err());
        assert_eq!(activity.count(), 1);
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "one token is still held");
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("idle once the last token is dropped")
            .expect("no panic");
    }
}
