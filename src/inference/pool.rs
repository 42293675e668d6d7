//! A fixed set of ONNX Runtime sessions shared by requests. `Session::run` needs `&mut`, so each request
//! borrows a whole slot for the length of one inference; a semaphore counts free slots, and a request that
//! cannot get one within the configured wait is turned away instead of queueing without bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Pool<T> {
    slots: Mutex<Vec<T>>,
    free: Arc<Semaphore>,
    size: usize,
}

/// A borrowed slot; it goes back to the pool when dropped, even if the work panicked.
pub struct Lease<T: Send + 'static> {
    pool: Arc<Pool<T>>,
    slot: Option<T>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
#[error("all {size} inference slots stayed busy for {waited_ms} ms")]
pub struct Busy {
    pub size: usize,
    pub waited_ms: u64,
}

impl<T: Send + 'static> Pool<T> {
    pub fn new(slots: Vec<T>) -> Arc<Self> {
        let size = slots.len();
        Arc::new(Pool { slots: Mutex::new(slots), free: Arc::new(Semaphore::new(size)), size })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots not lent out right now.
    pub fn available(&self) -> usize {
        self.free.available_permits()
    }

    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Lease<T>, Busy> {
        let busy = || Busy { size: self.size, waited_ms: wait.as_millis() as u64 };
        let permit = match tokio::time::timeout(wait, self.free.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(busy()),
        };
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A permit guarantees a slot: permits and slots are created and returned together.
        let slot = slot.expect("a permit always has a slot");
        Ok(Lease { pool: self.clone(), slot: Some(slot), _permit: permit })
    }
}

impl<T: Send + 'static> Lease<T> {
    pub fn get(&mut self) -> &mut T {
        self.slot.as_mut().expect("present until drop")
    }
}

impl<T: Send + 'static> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.slots.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lends_each_slot_once_and_turns_away_when_full() {
        let pool = Pool::new(vec![1, 2]);
        let a = pool.acquire(Duration::ZERO).await.unwrap();
        let mut b = pool.acquire(Duration::ZERO).await.unwrap();
        assert_eq!(pool.available(), 0);
        let err = pool.acquire(Duration::from_millis(10)).await.err().expect("no slot left");
        assert_eq!(err.size, 2);
        *b.get() += 10;
        drop(b);
        let mut again = pool.acquire(Duration::ZERO).await.unwrap();
        assert_eq!(*again.get(), 11, "a returned slot keeps its state");
        drop((a, again));
        assert_eq!(pool.available(), 2);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_next_free_slot() {
        let pool = Pool::new(vec![()]);
        let lease = pool.acquire(Duration::ZERO).await.unwrap();
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(Duration::from_secs(5)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(lease);
        assert!(waiter.await.unwrap());
    }
}
