//! Module images analysed off the ring-buffer loop: hashing, decompressing
//! and parsing an image of hundreds of MiB takes a while, during which the
//! loop must go on reading load notices (whose images are copied while the
//! loader is still in its call) and records. A few worker threads analyse
//! the images, so that a small one need not wait behind a large one; what
//! waits for them is bounded.
use std::{
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::enrich::{ImageReport, TakenImage};

/// Images queued for the worker before `submit` waits for it: each may hold
/// a copy of a whole image.
const QUEUED: usize = 8;

/// Worker threads: two, so that one large image does not hold up the
/// others, and more only on hosts with the cores for them.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

pub struct Analyses<T> {
    jobs: Option<SyncSender<(T, TakenImage)>>,
    done: UnboundedReceiver<(T, ImageReport)>,
    /// Analysed here because the workers were gone.
    done_here: std::collections::VecDeque<(T, ImageReport)>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
}

impl<T: Send + 'static> Analyses<T> {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel::<(T, TakenImage)>(QUEUED);
        let queue = Arc::new(Mutex::new(queue));
        let (finished, done) = unbounded_channel();
        let workers = (0..workers())
            .map(|_| {
                let queue = Arc::clone(&queue);
                let finished = finished.clone();
                std::thread::Builder::new()
                    .name("modtrace-images".into())
                    .spawn(move || {
                        while let Some((item, image)) = next_job(&queue) {
                            if finished.send((item, image.analyze())).is_err() {
                                break;
                            }
                        }
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            done_here: std::collections::VecDeque::new(),
            workers,
            in_flight: 0,
        })
    }

    /// Queues `image` for analysis; `item` comes back with its report. Waits
    /// while `QUEUED` images are ahead of it.
    pub fn submit(&mut self, item: T, image: TakenImage) {
        let analyzed_here = match &self.jobs {
            Some(jobs) => jobs.send((item, image)).err().map(|e| e.0),
            None => Some((item, image)),
        };
        self.in_flight += 1;
        // The workers are gone only if they panicked: analyse here instead
        // of dropping the record.
        if let Some((item, image)) = analyzed_here {
            self.jobs = None;
            self.done_here.push_back((item, image.analyze()));
        }
    }

    /// Whether a submitted image has not come back yet.
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// The next analysed image (waits for it).
    pub async fn next(&mut self) -> Option<(T, ImageReport)> {
        let finished = match self.done_here.pop_front() {
            Some(here) => here,
            None => self.done.recv().await?,
        };
        self.in_flight -= 1;
        Some(finished)
    }

    /// Waits for every submitted image, for shutdown.
    pub fn finish_all(&mut self) -> Vec<(T, ImageReport)> {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut finished: Vec<_> = self.done_here.drain(..).collect();
        while let Ok(item) = self.done.try_recv() {
            finished.push(item);
        }
        self.in_flight = 0;
        finished
    }
}

/// The next image to analyse; None once the queue is closed and empty.
fn next_job<J>(queue: &Mutex<Receiver<J>>) -> Option<J> {
    // A worker that panicked poisons the lock; the queue itself is intact.
    let queue = queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    queue.recv().ok()
}
