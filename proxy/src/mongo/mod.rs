//! MongoDB beyond the snapshot tier (`tier::mongo`): change streams that
//! turn changes of the Officer's users into profile events, and the stored
//! posts whose author snapshots follow profile changes. Everything here
//! speaks the MongoDB API only (the tests run it against SecantusDB or a
//! real replica set).

pub mod change_stream;
pub mod client;
pub mod post_snapshots;
