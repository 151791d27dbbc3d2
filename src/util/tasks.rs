//! One core's long-lived tasks (mesh readers and flushers, the streaming tick, the FT loop,
//! listeners, route dialers, the monitoring server, the external NATS reader): each is named,
//! runs in the task queue it asks for, and ends at its next await point once the core stops
//! them (`stop_all`: each is cancelled, so it is never polled again, and waited for). The
//! tasks pay nothing for it while they run. Short-lived tasks (one connection, one commit,
//! one read from disk) are not listed: they end with what they serve.

use super::timeout::within;
use glommio::task::JoinHandle;
use glommio::TaskQueueHandle;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Entry {
    name: &'static str,
    handle: JoinHandle<()>,
    /// Set when the task ended by itself.
    done: Rc<Cell<bool>>,
}

#[derive(Default)]
pub struct CoreTasks {
    stopping: Cell<bool>,
    tasks: RefCell<Vec<Entry>>,
}

impl CoreTasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `task` as the long-lived task `name`, in `queue` (the default queue if `None`).
    /// Once the core stops, nothing new starts.
    pub fn spawn(
        &self,
        name: &'static str,
        queue: Option<TaskQueueHandle>,
        task: impl Future<Output = ()> + 'static,
    ) {
        if self.stopping.get() {
            log::debug!("task {name} not started: the core is stopping");
            return;
        }
        let done = Rc::new(Cell::new(false));
        let finished = done.clone();
        let body = async move {
            task.await;
            finished.set(true);
        };
        let spawned = match queue {
            Some(q) => glommio::spawn_local_into(body, q),
            None => Ok(glommio::spawn_local(body)),
        };
        match spawned {
            Ok(task) => {
                let handle = task.detach();
                let mut tasks = self.tasks.borrow_mut();
                tasks.retain(|e| !e.done.get());
                tasks.push(Entry { name, handle, done });
            }
            Err(e) => log::error!("cannot start task {name}: {e}"),
        }
    }

    /// The names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        self.tasks
            .borrow()
            .iter()
            .filter(|e| !e.done.get())
            .map(|e| e.name)
            .collect()
    }

    /// Stops every task and waits for them, at most `limit` in all; returns the names of those
    /// that had not ended by then.
    pub async fn stop_all(&self, limit: Duration) -> Vec<&'static str> {
        self.stopping.set(true);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for e in &tasks {
            e.handle.cancel();
        }
        let deadline = Instant::now() + limit;
        let mut late = Vec::new();
        for e in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            if within(left, e.handle).await.is_none() {
                late.push(e.name);
            }
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn every_task_ends_when_stopped_and_nothing_starts_after() {
        let ran = LocalExecutorBuilder::default()
            .spawn(|| async {
                let tasks = CoreTasks::new();
                let ticks = Rc::new(Cell::new(0u32));
                let counted = ticks.clone();
                tasks.spawn("ticker", None, async move {
                    loop {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                        counted.set(counted.get() + 1);
                    }
                });
                tasks.spawn("idle", None, std::future::pending());
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert_eq!(tasks.running(), vec!["ticker", "idle"]);
                let late = tasks.stop_all(Duration::from_secs(1)).await;
                assert!(late.is_empty(), "{late:?}");
                assert!(tasks.running().is_empty());
                let seen = ticks.get();
                assert!(seen > 0);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                assert_eq!(ticks.get(), seen, "the ticker stopped");
                tasks.spawn("late", None, std::future::pending());
                assert!(tasks.running().is_empty(), "nothing starts once stopping");
                true
            })
            .and_then(|h| h.join());
        assert!(matches!(ran, Ok(true)), "executor: {:?}", ran.err());
    }
}
