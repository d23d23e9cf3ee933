//! [`Shutdown`]: the shutdown signal as every task sees it, so each finishes
//! its current unit of work before it exits.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// The shutdown signal as every task sees it.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal that fires when `signal` completes.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = sender.send(true);
        });
        Shutdown(receiver)
    }

    /// Waits until shutdown was asked for.
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which only happens after sending.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps for `duration`; `false` when shutdown came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}
