//! Where shown lines go: one printing thread, so lines come out in the
//! order the session produced them whatever the line editor is doing.
//!
//! A thread rather than a direct write because rustyline's external printer
//! can block until the editor thread takes the line, and the session task
//! must never stall on that (heartbeats are answered from the same task).

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

enum Job {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// A handle on the printing thread.
#[derive(Clone)]
pub struct Output {
    jobs: mpsc::Sender<Job>,
}

impl Output {
    /// Starts the printing thread; `show` puts one line (without `\n`) on
    /// the screen or stdout.
    pub fn spawn(mut show: Box<dyn FnMut(String) + Send>) -> Output {
        let (jobs, rx) = mpsc::channel();
        thread::Builder::new()
            .name("chatc-output".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Line(s) => show(s),
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawning the output thread");
        Output { jobs }
    }

    /// Queues one line for showing.
    pub fn line(&self, s: impl Into<String>) {
        let _ = self.jobs.send(Job::Line(s.into()));
    }

    /// Waits (up to `timeout`) until every line queued so far is shown, so
    /// that the last words are on the screen before the process exits.
    pub fn flush(&self, timeout: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}
