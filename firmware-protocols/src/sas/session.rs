//! Host session per EGM address (being written; see issue 2).
