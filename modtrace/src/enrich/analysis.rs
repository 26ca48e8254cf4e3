//! Module images analysed off the ring-buffer loop: hashing, decompressing
//! and parsing an image of hundreds of MiB takes a while, during which the
//! loop must go on reading load notices (whose images are copied while the
//! loader is still in its call) and records. A few worker threads analyse
//! the images, so that a small one need not wait behind a large one; what
//! waits for them is bounded. Records of one thread still come out in the
//! order of its calls (a modprobe's dependency before the module that needs
//! it): a record of a thread with an image under analysis waits behind it.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::image::TakenImage;
use crate::record::image::ImageReport;

/// Images queued for the worker before `submit` waits for it: each may hold
/// a copy of a whole image.
const QUEUED: usize = 8;

/// Worker threads: two, so that one large image does not hold up the
/// others, and more only on hosts with the cores for them.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// An image to analyse or analysed: its thread, its id in that thread's line,
/// its record, and the image or its report.
type Job<T> = (u32, u64, T, TakenImage);
type Done<T> = (u32, u64, T, ImageReport);

/// One thread's record in line: still being analysed, or ready to go
/// (boxed: a record and its report are large, an id is not).
enum Slot<T> {
    Analysing(u64),
    Ready(Box<(T, Option<ImageReport>)>),
}

pub struct Analyses<T> {
    jobs: Option<SyncSender<Job<T>>>,
    done: UnboundedReceiver<Done<T>>,
    /// Analysed here because the workers were gone.
    done_here: VecDeque<Done<T>>,
    workers: Vec<JoinHandle<()>>,
    /// By thread: its records from the oldest under analysis on.
    lines: HashMap<u32, VecDeque<Slot<T>>>,
    next_id: u64,
    in_flight: usize,
}

impl<T: Send + 'static> Analyses<T> {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel::<Job<T>>(QUEUED);
        let queue = Arc::new(Mutex::new(queue));
        let (finished, done) = unbounded_channel();
        let workers = (0..workers())
            .map(|_| {
                let queue = Arc::clone(&queue);
                let finished = finished.clone();
                std::thread::Builder::new()
                    .name("modtrace-images".into())
                    .spawn(move || {
                        while let Some((tid, id, item, image)) = next_job(&queue) {
                            if finished.send((tid, id, item, image.analyze())).is_err() {
                                break;
                            }
                        }
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            done_here: VecDeque::new(),
            workers,
            lines: HashMap::new(),
            next_id: 0,
            in_flight: 0,
        })
    }

    /// Queues `image` of thread `tid`'s record `item` for analysis; the
    /// record comes back from [`Analyses::next`] with its report. Waits
    /// while `QUEUED` images are ahead of it.
    pub fn submit(&mut self, tid: u32, item: T, image: TakenImage) {
        let id = self.next_id;
        self.next_id += 1;
        self.lines
            .entry(tid)
            .or_default()
            .push_back(Slot::Analysing(id));
        self.in_flight += 1;
        let analyzed_here = match &self.jobs {
            Some(jobs) => jobs.send((tid, id, item, image)).err().map(|e| e.0),
            None => Some((tid, id, item, image)),
        };
        // The workers are gone only if they panicked: analyse here instead
        // of dropping the record.
        if let Some((tid, id, item, image)) = analyzed_here {
            self.jobs = None;
            self.done_here.push_back((tid, id, item, image.analyze()));
        }
    }

    /// Thread `tid`'s record `item`, which needs no analysis: given back to
    /// be written now, unless an earlier record of the thread is still being
    /// analysed, behind which it waits.
    pub fn pass(&mut self, tid: u32, item: T) -> Option<T> {
        match self.lines.get_mut(&tid) {
            Some(line) => {
                line.push_back(Slot::Ready(Box::new((item, None))));
                None
            }
            None => Some(item),
        }
    }

    /// Whether a submitted image has not come back yet.
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    /// Waits for the next analysed image; returns the records it lets go,
    /// in their thread's order, with their reports.
    pub async fn next(&mut self) -> Vec<(T, Option<ImageReport>)> {
        let finished = match self.done_here.pop_front() {
            Some(here) => Some(here),
            None => self.done.recv().await,
        };
        match finished {
            Some(done) => self.release(done),
            None => Vec::new(),
        }
    }

    /// Marks `id` analysed and lets go of what its thread's line has ready
    /// from its front.
    fn release(&mut self, (tid, id, item, report): Done<T>) -> Vec<(T, Option<ImageReport>)> {
        self.in_flight -= 1;
        let mut out = Vec::new();
        let Some(line) = self.lines.get_mut(&tid) else {
            return vec![(item, Some(report))];
        };
        if let Some(slot) = line
            .iter_mut()
            .find(|s| matches!(s, Slot::Analysing(i) if *i == id))
        {
            *slot = Slot::Ready(Box::new((item, Some(report))));
        }
        while let Some(Slot::Ready(_)) = line.front() {
            if let Some(Slot::Ready(ready)) = line.pop_front() {
                out.push(*ready);
            }
        }
        if line.is_empty() {
            self.lines.remove(&tid);
        }
        out
    }

    /// Waits for every submitted image, for shutdown; returns every record
    /// still held, in their threads' order.
    pub fn finish_all(&mut self) -> Vec<(T, Option<ImageReport>)> {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut finished: Vec<Done<T>> = self.done_here.drain(..).collect();
        while let Ok(done) = self.done.try_recv() {
            finished.push(done);
        }
        finished
            .into_iter()
            .flat_map(|done| self.release(done))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(analyses: &mut Analyses<&'static str>) -> Vec<(&'static str, bool)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        while analyses.busy() {
            let released = runtime.block_on(analyses.next());
            out.extend(
                released
                    .into_iter()
                    .map(|(item, report)| (item, report.is_some())),
            );
        }
        out
    }

    #[test]
    fn a_threads_records_keep_their_order_and_others_pass() {
        let mut analyses = Analyses::start().unwrap();
        // Large enough that its analysis is still going on below.
        analyses.submit(1, "large", TakenImage::of_bytes(vec![0; 64 << 20]));
        assert_eq!(analyses.pass(1, "after it, same thread"), None);
        assert_eq!(analyses.pass(2, "other thread"), Some("other thread"));
        analyses.submit(2, "small", TakenImage::of_bytes(vec![1; 64]));
        assert_eq!(analyses.pass(2, "after small"), None);
        let out = drain(&mut analyses);
        let position = |item| out.iter().position(|(i, _)| *i == item).unwrap();
        assert!(
            position("large") < position("after it, same thread"),
            "{out:?}"
        );
        assert!(position("small") < position("after small"), "{out:?}");
        assert_eq!(out.len(), 4, "{out:?}");
        for (item, analysed) in &out {
            assert_eq!(*analysed, matches!(*item, "large" | "small"), "{out:?}");
        }
        // A thread whose line emptied is free again.
        assert_eq!(analyses.pass(1, "later"), Some("later"));
    }

    #[test]
    fn shutdown_lets_every_record_go_in_order() {
        let mut analyses = Analyses::start().unwrap();
        analyses.submit(7, "first", TakenImage::of_bytes(vec![0; 1 << 20]));
        assert_eq!(analyses.pass(7, "second"), None);
        analyses.submit(7, "third", TakenImage::of_bytes(vec![0; 16]));
        let order: Vec<_> = analyses.finish_all().into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, ["first", "second", "third"]);
        assert!(!analyses.busy());
    }
}
