//! Client–relay wire protocol. The frames and their codec land with the relay; see docs/protocol.md.
