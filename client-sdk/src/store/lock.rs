//! Process locks: at most one process per role runs a device on one store.
//!
//! Two app processes on one store would each hold a relay connection for the same
//! device, and the relay keeps only the newest (docs/protocol.md §13.6): they would take
//! the socket from each other for ever. A store that other processes can open (SQLite)
//! takes an advisory lock per [`ProcessRole`] when a client opens it, released when the
//! client shuts down or is dropped, and by the operating system when the process dies.

/// The kind of process that runs a client on a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProcessRole {
    /// The app: keeps the relay connection, sends the outbox. One per store.
    App,
    /// A notification-extension process (it decrypts one pushed envelope and exits). It
    /// shares the store with the running app by design: it takes a lock of its own, never
    /// the app's, so it runs beside the app (the store's compare-and-swap writes keep the
    /// two consistent) while two extension processes never run at once.
    NotificationExtension,
}

impl ProcessRole {
    /// A stable name: `app`, `notification_extension` (also the lock file's infix).
    pub fn code(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::NotificationExtension => "notification_extension",
        }
    }
}

/// A held process lock; released when dropped.
pub struct ProcessLock {
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl ProcessLock {
    /// Wraps whatever holds the lock (a locked file).
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for ProcessLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessLock").finish_non_exhaustive()
    }
}
