//! The Sotto blind relay. The server lands with its issue; see docs/ARCHITECTURE.md.
