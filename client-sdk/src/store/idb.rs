//! The IndexedDB store (browser and node with an IndexedDB implementation).
