//! Single flight: concurrent requests for one name share one run of the work that answers it.
//!
//! The first request for a name runs the work (the leader); requests for the same name that
//! arrive while it runs wait for its result (followers). A hot entry asked for by 200 CI jobs at
//! once is then one storage read, not 200. The map holds only runs in progress, so it is bounded
//! by the requests in flight. A leader whose request is dropped (its client went away) drops its
//! run with it; its followers then start again, and one of them leads.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

type Landing<T> = watch::Receiver<Option<T>>;

pub struct Flights<T> {
    runs: Mutex<HashMap<String, Landing<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            runs: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether a result came from this request's own run or from another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Led,
    Followed,
}

impl<T: Clone + Send + Sync> Flights<T> {
    /// The result of `work` for `name`: run here, or shared with the run already in progress.
    pub async fn run<F, Fut>(&self, name: &str, work: F) -> (T, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut work = Some(work);
        loop {
            let joined = {
                let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
                match runs.get(name) {
                    Some(landing) => Err(landing.clone()),
                    None => {
                        let (sender, landing) = watch::channel(None);
                        runs.insert(name.to_owned(), landing.clone());
                        Ok((sender, landing))
                    }
                }
            };
            match joined {
                Err(mut landing) => {
                    if let Ok(result) = landing.wait_for(Option::is_some).await {
                        return (result.clone().expect("waited for a result"), Role::Followed);
                    }
                    // The leader was dropped before it landed: start again.
                }
                Ok((sender, landing)) => {
                    let Some(work) = work.take() else {
                        unreachable!("a request leads at most once: it returns when it has")
                    };
                    // Declared after `sender`, so dropped before it: the name is free again
                    // before the followers hear that this run ended (landed or dropped).
                    let _clear = Clear {
                        runs: &self.runs,
                        name,
                        landing,
                    };
                    let result = work().await;
                    sender.send_replace(Some(result.clone()));
                    return (result, Role::Led);
                }
            }
        }
    }

    /// Runs in progress.
    pub fn in_progress(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes a run from the map when its leader finishes or is dropped (only that run: a later
/// run of the same name is left alone).
struct Clear<'a, T> {
    runs: &'a Mutex<HashMap<String, Landing<T>>>,
    name: &'a str,
    landing: Landing<T>,
}

impl<T> Drop for Clear<'_, T> {
    fn drop(&mut self) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs
            .get(self.name)
            .is_some_and(|current| current.same_channel(&self.landing))
        {
            runs.remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Many requests for one name while a run is in progress: one run, one result for all.
    #[tokio::test]
    async fn concurrent_requests_share_one_run() {
        let flights = Arc::new(Flights::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flights, runs, mut gate) = (flights.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("org/1", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.wait_for(|open| *open).await.unwrap();
                        7
                    })
                    .await
            }));
        }
        // On this single-threaded runtime a yield runs every spawned task until it waits: the
        // first leads and waits on the gate, the 49 others wait on its run.
        tokio::task::yield_now().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_progress(), 1);
        release.send(true).unwrap();
        let mut led = 0;
        for task in tasks {
            let (value, role) = task.await.unwrap();
            assert_eq!(value, 7);
            led += usize::from(role == Role::Led);
        }
        assert_eq!(led, 1, "one leader");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one run for 50 concurrent requests"
        );
        assert_eq!(flights.in_progress(), 0, "nothing left behind");
    }

    /// A leader dropped mid-run: a follower runs the work again, and the name is freed.
    #[tokio::test]
    async fn a_dropped_leader_hands_over() {
        let flights = Arc::new(Flights::<u32>::default());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("org/2", std::future::pending).await })
        };
        while flights.in_progress() == 0 {
            tokio::task::yield_now().await;
        }
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("org/2", || async { 9 }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), (9, Role::Led));
        assert_eq!(flights.in_progress(), 0);
    }
}
