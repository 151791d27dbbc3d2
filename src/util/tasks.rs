//! One core's long-lived tasks (mesh readers and flushers, the streaming tick, the FT loop,
//! listeners, route dialers, the monitoring server, the external NATS reader): each is named,
//! runs in the task queue it asks for, and ends at its next await point once the core stops
//! them (`stop_all`), which waits for them. Short-lived tasks (one connection, one commit, one
//! read from disk) are not listed: they end with what they serve.

use super::notify::Notify;
use glommio::task::JoinHandle;
use glommio::TaskQueueHandle;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Set once, when the core stops its tasks.
#[derive(Default)]
struct Stop {
    set: Cell<bool>,
    notify: Notify,
}

impl Stop {
    async fn wait(&self) {
        while !self.set.get() {
            self.notify.notified().await;
        }
    }
}

struct Entry {
    name: &'static str,
    handle: JoinHandle<()>,
    done: Rc<Cell<bool>>,
}

#[derive(Default)]
pub struct CoreTasks {
    stop: Rc<Stop>,
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
        if self.stop.set.get() {
            log::debug!("task {name} not started: the core is stopping");
            return;
        }
        let stop = self.stop.clone();
        let done = Rc::new(Cell::new(false));
        let finished = done.clone();
        let body = async move {
            futures_lite::future::or(task, async { stop.wait().await }).await;
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

    /// Whether the core is stopping its tasks.
    pub fn stopping(&self) -> bool {
        self.stop.set.get()
    }

    /// Tells every task to stop and waits for them, at most `limit`; those still running then
    /// are cancelled, and their names returned.
    pub async fn stop_all(&self, limit: Duration) -> Vec<&'static str> {
        self.stop.set.set(true);
        self.stop.notify.notify();
        let deadline = Instant::now() + limit;
        loop {
            let running = self.running();
            if running.is_empty() {
                return running;
            }
            if Instant::now() >= deadline {
                for e in self.tasks.borrow().iter().filter(|e| !e.done.get()) {
                    e.handle.cancel();
                }
                return running;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
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
